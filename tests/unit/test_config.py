"""Config loading: every error names the file, the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoballoon_core import bootstrap
from autoballoon_core.config import ConfigError
from autoballoon_core.model import MiB, PressureLevel
from autoballoon_core.options import OptionError, parse_duration, parse_size
from autoballoon_plugins.policies.seed import LevelsSettings

GOOD = """
[engine]
policy = "seed-levels"
coalesce_interval = "500ms"

[guard]
floor = "300MiB"

[backends.qmp]
enabled = true

[policies.seed-levels]
medium = "32MiB"

[guests."web-*"]
floor = "1GiB"
weight = 2
"""


def write(tmp_path: Path, text: str, name: str = "autoballoon.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_config_is_parsed_into_bytes_and_seconds(tmp_path: Path) -> None:
    config = bootstrap.load(write(tmp_path, GOOD)).config
    assert config.policy == "seed-levels"
    assert config.engine.coalesce_interval == 0.5
    assert config.guard.floor == 300 * MiB
    assert config.policy_options == LevelsSettings(medium=32 * MiB, critical=128 * MiB)
    assert "qmp" in config.backends
    override = config.guest_override("qmp:web-1", "web-1")
    assert override.floor == 1024 * MiB and override.weight == 2


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[engine]\ncoalesce_interval = \"fast\"\n", "engine.coalesce_interval", "duration"),
        ("[engine]\npolicy = \"nope\"\n", "engine.policy", "seed-fixed"),
        ("[guard]\nfloor = -1\n", "guard.floor", "negative"),
        ("[guard]\nfloor_percent = 2.0\n", "guard.floor_percent", "at most"),
        ("[guard]\nflor = 1\n", "guard.flor", "known keys"),
        ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level", "'debug'"),
        ("[sources.nosuch]\nenabled = true\n", "sources.nosuch", "available"),
        ("[policies.seed-levels]\nlow = \"1 parsec\"\n", "policies.seed-levels.low", "size"),
        ("[whatever]\nx = 1\n", "whatever", "unknown section"),
        ("[daemon]\ncontrol_read_group = \"no-such-group-here\"\n",
         "daemon.control_read_group", "no group named 'no-such-group-here' on this host"),
        ("[daemon]\ncontrol_admin_group = \"a\\u0000b\"\n", "daemon.control_admin_group",
         "no group named"),
        ("[daemon]\ncontrol_socket_group = \"no-such-group-here\"\n",
         "daemon.control_socket_group", "an existing group's name"),
    ],
)
def test_errors_name_file_key_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, GOOD + "\n" if "[engine]" not in text else "[backends.qmp]\n"
                 "enabled = true\n")
    dropins = tmp_path / "autoballoon.d"
    dropins.mkdir()
    bad = write(dropins, text, "50-bad.toml")
    with pytest.raises(ConfigError) as error:
        bootstrap.load(path)
    message = str(error.value)
    assert message.startswith(f"{bad}: {key}: "), message
    assert fragment in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        bootstrap.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        bootstrap.load(tmp_path / "absent.toml")


def test_a_backend_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no backend is enabled"):
        bootstrap.load(write(tmp_path, "[engine]\npolicy = \"seed-fixed\"\n"))


def test_dropins_override_single_keys_in_name_order(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    dropins = tmp_path / "autoballoon.d"
    dropins.mkdir()
    write(dropins, "[guard]\nfloor = \"400MiB\"\n", "10-a.toml")
    write(dropins, "[guard]\nfloor = \"500MiB\"\n", "20-b.toml")
    config = bootstrap.load(path).config
    assert config.guard.floor == 500 * MiB
    assert config.guard.max_step == 512 * MiB


def test_the_old_section_name_guards_is_read_with_a_warning_naming_the_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, GOOD.replace("[guard]\nfloor = \"300MiB\"\n", ""))
    dropins = tmp_path / "autoballoon.d"
    dropins.mkdir()
    old = write(dropins, "[guards]\nfloor = \"400MiB\"\n", "10-old.toml")
    write(dropins, "[guard]\nmax_step = \"64MiB\"\n", "20-new.toml")
    with caplog.at_level("WARNING", logger="autoballoon_core.config"):
        config = bootstrap.load(path).config
    assert config.guard.floor == 400 * MiB
    assert config.guard.max_step == 64 * MiB
    assert [r.getMessage() for r in caplog.records] == [
        f"{old}: [guards] is deprecated, write [guard] (same keys); the old name is still "
        "read for now"]


def test_old_and_new_guard_section_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\n[guards]\nfloor = \"1GiB\"\n")
    with pytest.raises(ConfigError, match=r"autoballoon.toml: guards: \[guards\] is the "
                       r"deprecated name of \[guard\]; this file has both"):
        bootstrap.load(path)


def test_command_line_overrides_win(tmp_path: Path) -> None:
    config = bootstrap.load(write(tmp_path, GOOD), overrides={"daemon": {"dry_run": True}}).config
    assert config.daemon.dry_run is True


def test_blocked_plugins_are_not_loaded(tmp_path: Path) -> None:
    text = GOOD.replace('policy = "seed-levels"', 'policy = "seed-levels"\n') + (
        "\n[plugins]\nblock = [\"seed_policies\"]\n"
    )
    with pytest.raises(ConfigError, match=r"engine\.policy: .seed-levels. is not a loaded policy"):
        bootstrap.load(write(tmp_path, text))


@pytest.mark.parametrize(("text", "value"), [("16MiB", 16 * MiB), ("1G", 1 << 30),
                                              ("512k", 512 * 1024), (4096, 4096), ("1.5GiB",
                                                                                   3 << 29)])
def test_sizes(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("500ms", 0.5), ("2s", 2.0), (3, 3.0),
                                              ("1min", 60.0)])
def test_durations(text: object, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("bad", ["", "x", True, -1, "5 parsecs", None, [1]])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(OptionError):
        parse_size(bad)


def test_levels_parse() -> None:
    assert PressureLevel.parse("Medium") is PressureLevel.MEDIUM
    with pytest.raises(ValueError, match="allowed"):
        PressureLevel.parse("huge")


def test_existing_groups_are_accepted(tmp_path: Path) -> None:
    import grp
    import os

    name = grp.getgrgid(os.getegid()).gr_name
    text = GOOD + f'\n[daemon]\ncontrol_read_group = "{name}"\ncontrol_admin_group = "{name}"\n'
    config = bootstrap.load(write(tmp_path, text)).config
    assert config.daemon.control_read_group == name
