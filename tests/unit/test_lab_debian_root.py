"""autoballoon_lab.debian_root's pure parts: which archive, which cache entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_lab import debian_root
from autoballoon_lab.errors import LabUnavailable


def test_the_archive_is_apts_own_main_archive(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(debian_root.MIRROR_ENV, raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://archive.example/debian-security\n"
                      "Suites: bookworm-security\n\nTypes: deb\n"
                      "URIs: http://archive.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://commented.example/debian bookworm main\n"
                        "deb http://mirror.example/debian bookworm main\n")
    monkeypatch.setattr(debian_root, "APT_SOURCES", (tmp_path / "missing", deb822, one_line))
    assert debian_root.mirror() == "http://archive.example/debian"
    monkeypatch.setattr(debian_root, "APT_SOURCES", (one_line,))
    assert debian_root.mirror() == "http://mirror.example/debian"
    monkeypatch.setenv(debian_root.MIRROR_ENV, "http://override.example/debian")
    assert debian_root.mirror() == "http://override.example/debian"


def test_no_archive_names_the_files_and_the_variable(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(debian_root.MIRROR_ENV, raising=False)
    monkeypatch.setattr(debian_root, "APT_SOURCES", (tmp_path / "none.sources",))
    with pytest.raises(LabUnavailable, match=r"none\.sources.*AUTOBALLOON_DEBIAN_MIRROR"):
        debian_root.mirror()


def test_the_cache_entry_changes_with_the_suite_and_the_packages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    trixie = debian_root.root_dir("trixie")
    assert trixie.name.startswith("debian-trixie-")
    assert debian_root.root_dir("forky") != trixie
    monkeypatch.setattr(debian_root, "PACKAGES", (*debian_root.PACKAGES, "vim"))
    assert debian_root.root_dir("trixie") != trixie
