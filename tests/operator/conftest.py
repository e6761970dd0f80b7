"""Fixtures: one emulated cluster per module, the real operator in a thread (see tests/support/README.md)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes tests/support importable as `support`

from support.cluster import EmulatedCluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster() as c:
        yield c
