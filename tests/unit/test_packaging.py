"""Package metadata that setuptools accepts without a deprecation warning."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    # A table ({ text = ... }) is deprecated; the SPDX string needs setuptools >= 77.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    requires = " ".join(PYPROJECT["build-system"]["requires"])
    match = re.search(r"setuptools>=(\d+)", requires)
    assert match and int(match.group(1)) >= 77, requires
