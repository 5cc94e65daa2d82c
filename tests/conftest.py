"""Shared fixtures. Tests that need no member never start one (all member
fixtures are lazy). See tests/cluster.py for how the cluster is chosen."""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hypothesis_profiles
from tests.cluster import HzCluster, server_version, start_cluster, start_local_cluster

hypothesis_profiles.load()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_started: list[HzCluster] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid or "tests\\integration\\" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def hz_cluster() -> Iterator[HzCluster]:
    """The session's shared cluster (external, container or local JVM)."""
    cluster = start_cluster("session")
    _started.append(cluster)
    atexit.register(cluster.stop)  # also on an aborted run
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def hz_client(hz_cluster: HzCluster):
    """A session-wide connected client (IntType.LONG)."""
    client = hz_cluster.client()
    if hz_cluster.version is None:
        hz_cluster.version = server_version(client)
    yield client
    client.shutdown()


@pytest.fixture
def private_cluster() -> Iterator[HzCluster]:
    """A fresh member of its own, for tests that restart or kill the member."""
    cluster = start_cluster("private")
    if not cluster.owned:
        pytest.skip("member restart tests need a member this run owns (not an external cluster)")
    atexit.register(cluster.stop)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def three_members() -> Iterator[HzCluster]:
    """A fresh 3-member local cluster (maps with one synchronous backup), for member faults. Local
    JVMs only: the test kills and restarts members."""
    cluster = start_local_cluster(3)
    _started.append(cluster)
    atexit.register(cluster.stop)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def map_suffix() -> str:
    """A unique suffix so each test uses its own maps on the shared member."""
    return "_T" + uuid.uuid4().hex[:10].upper()


# Figures tests report with ``record_property`` (bars missed in a member restart, soak RSS growth,
# burst rates): shown in the terminal summary, so a green CI log still carries them.
_reported: list[tuple[str, str, str]] = []
_REPORT_SKIP = {"rss_samples"}  # raw series: in the JUnit XML (--junitxml) only


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _reported.extend((report.nodeid, str(k), str(v)) for k, v in report.user_properties if k not in _REPORT_SKIP)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _reported:
        terminalreporter.section("reported figures")
        for nodeid, key, value in _reported:
            terminalreporter.write_line(f"{nodeid} {key}: {value}")
    for cluster in _started:
        terminalreporter.write_line(
            f"Hazelcast member tested against: version={cluster.version or 'unknown'} "
            f"kind={cluster.kind} members={','.join(cluster.members)}"
        )
