"""Fixtures shared by the integration tests (the member fixtures are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import HzCluster
from tests.integration.feeder import TestFeeder, wait_for


@pytest.fixture
def feeder(hz_cluster: HzCluster, map_suffix: str) -> Iterator[TestFeeder]:
    """A synthetic 10 Hz feed of DEFAULT_SYMBOLS into the test's input map, running (3 ticks seen)."""
    client = hz_cluster.client()
    f = TestFeeder(client, "DOLPHIN_FEATURES" + map_suffix).start()
    wait_for(lambda: f.ticks >= 3, 10, "feeder running")
    yield f
    f.stop()
    client.shutdown()
