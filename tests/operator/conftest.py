"""Fixtures: one emulated cluster per module, the real operator in a thread (see tests/support/README.md)."""

import pytest

from support.cluster import EmulatedCluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster() as c:
        yield c
