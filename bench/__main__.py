"""``python -m bench [NAME [ARGS...]]``: list the benchmarks, or run one by name.

Each benchmark is a script ``bench/bench_NAME.py`` that prints its own figures;
``make bench`` lists them with their first docstring line.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    """Name -> first line of the script's docstring."""
    found = {}
    for path in sorted(HERE.glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem.removeprefix("bench_")] = doc.splitlines()[0] if doc else ""
    return found


def main(argv: list[str]) -> int:
    known = benchmarks()
    if not argv:
        print("benchmarks (python -m bench NAME [--help]):")
        for name, line in known.items():
            print(f"  {name:16} {line}")
        return 0
    name, *rest = argv
    if name not in known:
        print(f"no benchmark {name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    sys.argv = [str(HERE / f"bench_{name}.py"), *rest]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
