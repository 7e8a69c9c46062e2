"""Every CRYPTOPAY_* setting that cryptopay/settings.py reads is in the README's configuration
table (the table an operator reads; prose elsewhere does not count), and the table names none
that nothing reads."""

from __future__ import annotations

import re

from tests.notifications.test_settings_documented import ROOT, _configuration_rows, _documented

# env_int("CRYPTOPAY_…"), env_str(f"CRYPTOPAY_RATE_{name}_URL") and the like: every quoted name.
SETTING = re.compile(r'"(CRYPTOPAY_[A-Z0-9_]+)"')


def test_given_the_settings_module_then_every_cryptopay_setting_is_in_the_readme_table():
    names = set(SETTING.findall((ROOT / "cryptopay" / "settings.py").read_text()))
    rows = _configuration_rows()

    missing = sorted(name for name in names if not any(_documented(name, row) for row in rows))

    assert len(names) > 100
    assert missing == []


def test_the_check_can_fail_a_name_absent_from_the_table():
    rows = _configuration_rows()

    assert not any(_documented("CRYPTOPAY_NOT_A_SETTING_SECONDS", row) for row in rows)
    assert any(_documented("CRYPTOPAY_METADATA_MAX_BYTES", row) for row in rows)


# Where a CRYPTOPAY_* variable may be read: the settings, and the scripts and files that run the
# processes (the Makefile, compose, the Procfile, the Dockerfile, deploy/).
READERS = ["cryptopay/settings.py", "Makefile", "docker-compose.yml", "Procfile", "Dockerfile"]


def test_given_the_readme_table_then_every_cryptopay_name_in_it_is_read_somewhere():
    code = "\n".join((ROOT / name).read_text() for name in READERS) + "\n".join(
        path.read_text() for path in (ROOT / "deploy").rglob("*") if path.is_file()
    )
    named = {
        name
        for row in _configuration_rows()
        for name in re.findall(r"CRYPTOPAY_[A-Z0-9_]+", row.split("|")[1])
    }

    unread = sorted(name for name in named if name not in code)

    assert len(named) > 80
    assert unread == []
