"""``tools/ansible_checks.py``: the pip configuration handed to ansible-test's HOME."""

from __future__ import annotations

import configparser
import fcntl
import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


tool = runpy.run_path(str(ROOT / "tools" / "ansible_checks.py"), run_name="ansible_checks")
seed_pip_config = tool["seed_pip_config"]
user_pip_config = tool["user_pip_config"]


def _read(path: Path) -> dict[str, str]:
    config = configparser.RawConfigParser()
    config.read(path)
    return dict(config.items("global"))


def test_user_file_and_variables_reach_the_new_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://mirror.example/simple\ntimeout = 10\n"
        "[install]\nno-compile = true\n")
    environ = {"HOME": str(home), "PIP_TIMEOUT": "60", "PIP_CERT": "/etc/company-ca.pem",
               "PIP_CONFIG_FILE": "", "PIP_REQUIRE_VIRTUALENV": "1", "OTHER": "x"}
    written = seed_pip_config(tmp_path / "cache", environ)
    assert written == tmp_path / "cache" / ".config" / "pip" / "pip.conf"
    assert _read(written) == {"index-url": "https://mirror.example/simple", "timeout": "60",
                              "cert": "/etc/company-ca.pem"}
    config = configparser.RawConfigParser()
    config.read(written)
    assert config.get("install", "no-compile") == "true"


def test_config_file_sources(tmp_path: Path) -> None:
    named = tmp_path / "named.conf"
    assert user_pip_config({"PIP_CONFIG_FILE": str(named)}) == named
    assert user_pip_config({"PIP_CONFIG_FILE": os.devnull}) is None
    assert user_pip_config({"HOME": str(tmp_path)}) is None
    legacy = tmp_path / ".pip" / "pip.conf"
    legacy.parent.mkdir()
    legacy.write_text("[global]\n")
    assert user_pip_config({"HOME": str(tmp_path)}) == legacy
    xdg = tmp_path / "xdg" / "pip" / "pip.conf"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("[global]\n")
    assert user_pip_config({"HOME": str(tmp_path),
                                 "XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == xdg


def test_no_configuration_writes_an_empty_file(tmp_path: Path) -> None:
    written = seed_pip_config(tmp_path / "cache", {"HOME": str(tmp_path)})
    assert written.read_text() == ""


def test_each_tree_runs_with_a_home_and_a_lock_of_its_own(tmp_path: Path) -> None:
    """The matrix's releases run side by side: no two trees share ansible-test's HOME
    (its sanity virtualenvs) or a lock, and a tree's lock is held by one run at a time."""
    trees = [tmp_path / "tree-2.18", tmp_path / "tree-2.19", tmp_path / "tree"]
    homes = {tool["environment"](tree)["HOME"] for tree in trees}
    assert len(homes) == len(trees)
    assert all(Path(home).parent == tmp_path for home in homes)
    with (tool["tree_lock"](trees[0]), tool["tree_lock"](trees[1]),
          (tmp_path / "tree-2.18.lock").open("w") as second,
          pytest.raises(BlockingIOError)):
        fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
