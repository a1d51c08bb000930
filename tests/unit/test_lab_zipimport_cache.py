"""``autoballoon_lab.zipimport_cache``: modules imported from a zip, compiled once.

Each case runs a fresh Python (as every Ansible task in the VM is one), with the
cache installed, importing a module from a real zip file.
"""

from __future__ import annotations

import marshal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autoballoon_lab import systemd_vm, zipimport_cache

RUN = """
import sys, traceback
sys.path.insert(0, {lab!r})
import zipimport_cache
zipimport_cache.install({cache!r})
zipimport_cache.install({cache!r})
sys.path.insert(0, {archive!r})
import payload
print(payload.VALUE)
try:
    payload.fail()
except RuntimeError:
    print(traceback.extract_tb(sys.exc_info()[2])[-1].filename)
"""


def _zip(path: Path, value: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload.py", f"VALUE = {value!r}\n\ndef fail():\n"
                                       "    raise RuntimeError('from the zip')\n")
    return path


def _run(archive: Path, cache: Path) -> list[str]:
    script = RUN.format(lab=str(Path(zipimport_cache.__file__).parent), cache=str(cache),
                        archive=str(archive))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, timeout=60)
    return result.stdout.splitlines()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_the_second_process_loads_what_the_first_compiled(tmp_path: Path, cache: Path) -> None:
    first = _zip(tmp_path / "first.zip", "one")
    assert _run(first, cache) == ["one", f"{first}/payload.py"]
    (entry,) = cache.iterdir()
    # the same source again: the code comes from the entry (marked here), named after
    # the zip it is imported from now
    marked = compile("VALUE = 'from the cache'\ndef fail():\n    raise RuntimeError\n",
                     "elsewhere.py", "exec")
    entry.write_bytes(marshal.dumps(marked))
    second = _zip(tmp_path / "second.zip", "one")
    assert _run(second, cache) == ["from the cache", f"{second}/payload.py"]
    assert list(cache.iterdir()) == [entry]


def test_a_changed_source_is_compiled_afresh(tmp_path: Path, cache: Path) -> None:
    _run(_zip(tmp_path / "a.zip", "old"), cache)
    assert _run(_zip(tmp_path / "b.zip", "new"), cache)[0] == "new"
    assert len(list(cache.iterdir())) == 2


def test_a_broken_cache_entry_falls_back_to_compiling(tmp_path: Path, cache: Path) -> None:
    _run(_zip(tmp_path / "a.zip", "kept"), cache)
    for entry in cache.iterdir():
        entry.write_bytes(b"not marshalled code")
    assert _run(_zip(tmp_path / "b.zip", "kept"), cache)[0] == "kept"


def test_an_unwritable_cache_only_costs_the_compile(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    assert _run(_zip(tmp_path / "a.zip", "fine"), blocker / "cache")[0] == "fine"


def test_the_vm_init_installs_the_cache_for_the_system_python() -> None:
    init = systemd_vm.INIT_SCRIPT
    assert "cp /zipimport_cache.py \"$R/usr/lib/python3/dist-packages/" in init
    assert "autoballoon_zipimport_cache.install()" in init
    assert init.index("autoballoon-zipimport-cache.pth") > init.index('rm -f "$pth"')
