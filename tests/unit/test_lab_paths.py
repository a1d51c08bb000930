"""What a guest's interpreter is given: the checkout's packages, the plugins among them."""

from __future__ import annotations

import os
import subprocess

from autoballoon_lab.paths import host_python, python_path_entries


def test_a_plain_interpreter_with_the_guest_pythonpath_finds_every_package() -> None:
    """Guests run the host's real Python (no virtualenv, so no editable-install hook)
    with PYTHONPATH alone: the plugins of plugins/ must be importable that way too."""
    env = {"PATH": os.defpath, "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": os.pathsep.join(str(p) for p in python_path_entries())}
    script = ("import autoballoon_core.plugins as p, importlib, autoballoon_guest.agent; "
              "[importlib.import_module(m) for m in p.BUILTIN_PLUGINS.values()]; print('ok')")
    result = subprocess.run([str(host_python()), "-S", "-c", script], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]
