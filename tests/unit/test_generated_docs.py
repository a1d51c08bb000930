"""The generated parts of docs/ are exactly what the code generates.

The option tables come from the settings classes, the hook reference from the
hookspecs; a stale page fails here, whatever else it mentions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gen(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import gen_config_docs
    return gen_config_docs


def test_committed_docs_equal_the_generated_text(gen: object) -> None:
    pages = gen.generated()  # type: ignore[attr-defined]
    assert any(path.name == "policies.md" for path in pages)
    for path, text in pages.items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} differs from the generated text: "
            "run python tools/gen_config_docs.py")


def test_every_builtin_component_has_a_table_on_its_page(gen: object) -> None:
    pages = gen.generated()  # type: ignore[attr-defined]
    regions = {m.group("key") for path, text in pages.items()
               if path.name != "configuration.md"
               for m in gen.REGION.finditer(text)}  # type: ignore[attr-defined]
    assert {"hooks", "policies.autoballoon", "policies.mom", "policies.proxmox",
            "policies.seed-fixed", "policies.seed-levels", "backends.qmp",
            "backends.libvirt", "sources.guest-channel", "sources.psi", "sources.vmpressure",
            "sources.watermark", "sources.balloon-stats"} == regions


def test_a_changed_help_text_is_caught(gen: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoballoon_core import options
    from autoballoon_plugins.policies.mom import MomSettings

    changed = tuple(o if o.name != "interval" else
                    options.Option(o.name, o.kind, o.default, "Something else.")
                    for o in options.options_of(MomSettings))
    monkeypatch.setitem(options._OPTIONS, MomSettings, changed)
    stale = [path.name for path, text in gen.generated().items()  # type: ignore[attr-defined]
             if path.read_text() != text]
    assert sorted(stale) == ["configuration.md", "policies.md"]
    del sys.modules["gen_config_docs"]


def test_a_changed_hookspec_docstring_is_caught(gen: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autoballoon_core import hookspecs

    monkeypatch.setattr(hookspecs.autoballoon_event, "__doc__", "Something else.")
    stale = [path.name for path, text in gen.generated().items()  # type: ignore[attr-defined]
             if path.read_text() != text]
    assert stale == ["plugins.md"]
