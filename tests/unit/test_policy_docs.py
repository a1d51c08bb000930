"""docs/policies.md documents every option of every built-in policy with its help text."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_core.options import Option
from autoballoon_core.plugins import collect, create_plugin_manager

DOC = (Path(__file__).resolve().parents[2] / "docs" / "policies.md").read_text()
BUILTIN = ("seed-fixed", "seed-levels", "mom", "proxmox", "autoballoon")
SPECS = collect(create_plugin_manager()).policies
OPTIONS = [(name, option) for name in BUILTIN if name in SPECS
           for option in SPECS[name].options]


@pytest.mark.parametrize(("policy", "option"), OPTIONS,
                         ids=lambda v: getattr(v, "name", v))
def test_policy_option_is_documented(policy: str, option: Option) -> None:
    assert f"| `{option.name}` |" in DOC
    assert option.help in DOC, f"{policy}.{option.name}: help text differs from the docs"


@pytest.mark.parametrize("policy", BUILTIN)
def test_policy_has_a_section(policy: str) -> None:
    assert policy in SPECS
    assert f"`{policy}`" in DOC or f"## {policy}" in DOC
