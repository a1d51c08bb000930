"""Every program a test or a make target runs is installed by the Makefile.

``autoballoon_lab.prereq.PROGRAMS`` names each program with its Debian package;
``require_program`` only accepts programs listed there, and this test checks
that the Makefile's ``APT_PACKAGES`` installs every one of those packages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoballoon_lab import prereq

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def apt_packages(text: str) -> set[str]:
    """The words of the Makefile's ``APT_PACKAGES :=`` assignment (with continuations)."""
    match = re.search(r"^APT_PACKAGES\s*:=((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match, "no APT_PACKAGES := in the Makefile"
    return set(match.group(1).replace("\\\n", " ").split())


def test_makefile_installs_the_package_of_every_program() -> None:
    installed = apt_packages(MAKEFILE.read_text())
    missing = {program: package for program, package in prereq.PROGRAMS.items()
               if package not in installed and package not in prereq.ESSENTIAL_PACKAGES}
    assert not missing, f"Makefile APT_PACKAGES lacks the packages of {missing}"


def test_apt_packages_reads_continued_lines() -> None:
    text = "X := 1\nAPT_PACKAGES := a b \\\n\tc \\\n  d\nOTHER := e\n"
    assert apt_packages(text) == {"a", "b", "c", "d"}


def test_xmllint_is_listed_for_virt_xml_validate() -> None:
    # virt-xml-validate runs xmllint, which libvirt-clients only recommends
    assert prereq.PROGRAMS["xmllint"] == "libxml2-utils"


def test_an_unlisted_program_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        prereq.require_program("no-such-program-anywhere")


def test_a_missing_program_skips_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(prereq.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match=r"needs xmllint \(apt-get install "
                                                    r"libxml2-utils"):
        prereq.require_program("xmllint")


def test_a_missing_program_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(prereq.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="prerequisite missing in CI: needs xmllint"):
        prereq.require_program("xmllint")
