"""docs/configuration.md lists every core option with its current default."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_core import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
OPTIONS = [(section, option) for section, options in config._FIXED_SECTIONS.items()
           for option in options] + [("guests", o) for o in config.GUEST_OPTIONS]


@pytest.mark.parametrize(("section", "option"), OPTIONS, ids=lambda v: getattr(v, "name", v))
def test_option_is_documented(section: str, option: config.Option) -> None:
    assert f"| `{option.name}` |" in DOC
    assert option.help in DOC
