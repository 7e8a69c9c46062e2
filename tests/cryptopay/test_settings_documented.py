"""Every CRYPTOPAY_* setting that cryptopay/settings.py reads is in the README's configuration
table (the table an operator reads; prose elsewhere does not count)."""

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
