"""The README's configuration table names every notification setting an operator can set."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NOTIFICATION_SETTING = re.compile(r'"(CRYPTOPAY_(?:WEBHOOK|NOTIFY|WS)_[A-Z_]+)"')


def _configuration_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n\n")[2]
    return [line for line in table.splitlines() if line.startswith("| `")]


def _documented(name: str, row: str) -> bool:
    """In the row by its full name, or as `…_TAIL` beside a full name sharing its prefix."""
    first_cell = row.split("|")[1]
    full = re.findall(r"`(CRYPTOPAY_[A-Z_]+)`", first_cell)
    if name in full:
        return True
    for tail in re.findall(r"`…_([A-Z_]+)`", first_cell):
        prefix = name.removesuffix(f"_{tail}")
        if prefix != name and any(other.startswith(f"{prefix}_") for other in full):
            return True
    return False


def test_given_the_settings_module_then_every_webhook_notify_and_stream_setting_is_in_the_readme_table():
    names = set(NOTIFICATION_SETTING.findall((ROOT / "cryptopay" / "settings.py").read_text()))
    rows = _configuration_rows()

    missing = sorted(name for name in names if not any(_documented(name, row) for row in rows))

    assert len(names) > 15
    assert missing == []
