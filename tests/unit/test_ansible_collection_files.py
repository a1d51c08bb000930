"""Files the collection ships as copies: the guest agent and its unit, the monitoring
check, the licence."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "ansible_collection" / "roles" / "guest" / "files"


def test_role_ships_the_same_agent() -> None:
    assert (FILES / "autoballoon-guest-agent").read_bytes() == \
        (ROOT / "autoballoon_guest" / "agent.py").read_bytes(), \
        "roles/guest/files/autoballoon-guest-agent must be a copy of autoballoon_guest/agent.py"


def test_role_ships_the_same_unit() -> None:
    assert (FILES / "autoballoon-guest.service").read_bytes() == \
        (ROOT / "autoballoon_guest" / "autoballoon-guest.service").read_bytes(), \
        "roles/guest/files/autoballoon-guest.service must be a copy of " \
        "autoballoon_guest/autoballoon-guest.service"


def test_role_defaults_match_the_unit() -> None:
    """The drop-in restates ExecStart; by default it must say what the unit says."""
    defaults = (ROOT / "ansible_collection" / "roles" / "guest" / "defaults" /
                "main.yml").read_text()
    unit = (FILES / "autoballoon-guest.service").read_text()
    values = dict(line.split(": ", 1) for line in defaults.splitlines() if ": " in line)
    assert (f"ExecStart={values['autoballoon_guest_python']} "
            f"{values['autoballoon_guest_agent_path']}") in unit
    assert f"OOMScoreAdjust={values['autoballoon_guest_oom_score_adjust']}" in unit


def test_collection_ships_the_licence() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert (ROOT / "ansible_collection" / "LICENSE").read_text() == text


def test_role_ships_the_same_monitoring_check() -> None:
    shipped = ROOT / "ansible_collection" / "roles" / "host" / "files" / "check_autoballoon"
    assert shipped.read_bytes() == \
        (ROOT / "hooks" / "monitoring" / "check_autoballoon").read_bytes(), \
        "roles/host/files/check_autoballoon must be a copy of hooks/monitoring/check_autoballoon"
