"""The ``integration`` marker is where a test lives, not a line each file must remember.

Every test under ``tests/integration`` and ``tests/e2e`` (real kernel interfaces,
QEMU guests, libvirtd, ansible) is marked ``integration``; no other is. So
``pytest -m integration`` selects exactly the real-component tests and
``pytest -m "not integration"`` exactly the unit tests (fuzzers included).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_COMPONENT_DIRS = ("integration", "e2e")
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(item.path).resolve().relative_to(HERE).parts
        if parts[0] in REAL_COMPONENT_DIRS:
            item.add_marker(pytest.mark.integration)
