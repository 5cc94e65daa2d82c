"""How the test suite gets a real Hazelcast cluster.

Chosen by settings, in this order:
1. ``OBF_TEST_HZ_MEMBERS=host:port[,host:port]`` (+ ``OBF_TEST_HZ_CLUSTER``, default ``dev``):
   an external cluster; nothing is started or stopped.
2. A Docker engine that answers: the official ``hazelcast/hazelcast`` image via testcontainers.
3. Otherwise: a local member JVM from the open-source jars (``obf_features_worker.dev.member``),
   on a free port with a unique cluster name, stopped at the end even if tests fail.
``OBF_TEST_HZ_MODE=external|docker|local`` forces one of them.

Member version: ``OBF_TEST_HZ_VERSION`` (default ``DEFAULT_HZ_VERSION`` = 5.5.0, the version in
deploy/hazelcast/pom.xml) picks the Docker image tag, or the local jars: ``.hazelcast/lib`` for the
default, ``.hazelcast/lib-<version>`` for others (``deploy/hazelcast/fetch-jars.sh <version>``;
``make test-versions`` fetches and runs the matrix). A member that reports another version fails.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hazelcast
from hazelcast.config import IntType

from obf_contract.client import make_client
from obf_features_worker.dev.member import LocalMember, free_port

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HZ_VERSION = "5.5.0"
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def hz_version() -> str:
    """The member version the tests run against (env ``OBF_TEST_HZ_VERSION``)."""
    version = os.environ.get("OBF_TEST_HZ_VERSION", "").strip() or DEFAULT_HZ_VERSION
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"OBF_TEST_HZ_VERSION must look like 5.5.0, not {version!r}")
    return version


def lib_dir(version: str) -> Path:
    """Where fetch-jars.sh puts the member jars of ``version``."""
    if version == DEFAULT_HZ_VERSION:
        return Path(os.environ.get("OBF_HZ_LIB", REPO_ROOT / ".hazelcast" / "lib"))
    return REPO_ROOT / ".hazelcast" / f"lib-{version}"


@dataclass
class HzCluster:
    """A running cluster the tests may use; ``restart``/``kill_member`` only where we own it."""

    members: list[str]
    cluster_name: str
    kind: str  # "external" | "docker" | "local"
    version: str | None = None
    member: LocalMember | None = None
    _container: Any = field(default=None, repr=False)
    # every member of a multi-member local cluster (``start_local_cluster``); ``member`` is the first
    local_members: list[LocalMember] = field(default_factory=list)

    def client(self, **overrides: Any) -> hazelcast.HazelcastClient:
        """A connected client; LONG int keys as everywhere in the product."""
        return make_client(self.cluster_name, self.members, security={},
                           **{"cluster_connect_timeout": 30.0, **overrides})

    def foreign_client(self) -> hazelcast.HazelcastClient:
        """A client that is not ours (no pickle guard): stands for any other writer of the maps."""
        return hazelcast.HazelcastClient(cluster_name=self.cluster_name, cluster_members=list(self.members),
                                         default_int_type=IntType.LONG, cluster_connect_timeout=30.0)

    @property
    def owned(self) -> bool:
        return self.kind == "local"

    def restart(self) -> None:
        """Stop the member gracefully and start it again on the same address (local only)."""
        assert self.member is not None, "only a locally started member can be restarted"
        self.member.stop()
        self.member.start()

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i`` of a local multi-member cluster (a crash: no partition handover)."""
        self.local_members[i].kill()

    def restart_member(self, i: int) -> None:
        """Stop member ``i`` gracefully (it hands its partitions over) and start it again."""
        self.local_members[i].stop()
        self.local_members[i].start()

    def stop(self) -> None:
        for m in self.local_members:
            if m is not self.member:
                m.stop()
        if self.member is not None:
            self.member.stop()
        if self._container is not None:
            self._container.stop()


def _docker_available() -> bool:
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # any failure means: no usable engine here
        return False


def _mode() -> str:
    forced = os.environ.get("OBF_TEST_HZ_MODE", "").strip().lower()
    if forced:
        if forced not in {"external", "docker", "local"}:
            raise ValueError(f"OBF_TEST_HZ_MODE must be external, docker or local, not {forced!r}")
        return forced
    if os.environ.get("OBF_TEST_HZ_MEMBERS", "").strip():
        return "external"
    return "docker" if _docker_available() else "local"


def start_cluster(label: str = "session") -> HzCluster:
    """Start (or attach to) a cluster according to the settings above."""
    mode = _mode()
    cluster_name = f"obf-test-{label}-{uuid.uuid4().hex[:8]}"
    if mode == "external":
        members = [m.strip() for m in os.environ["OBF_TEST_HZ_MEMBERS"].split(",") if m.strip()]
        return HzCluster(members, os.environ.get("OBF_TEST_HZ_CLUSTER", "dev"), "external")
    if mode == "docker":
        return _start_container(cluster_name)
    version = hz_version()
    workdir = Path(tempfile.mkdtemp(prefix=f"obf-hz-{label}-"))
    member = LocalMember(port=free_port(), cluster_name=cluster_name, workdir=workdir, lib_dir=lib_dir(version))
    member.start()
    cluster = HzCluster([member.address], cluster_name, "local", version=member.version(), member=member)
    _check_version(cluster, version)
    return cluster


def start_local_cluster(n: int, label: str = "multi") -> HzCluster:
    """``n`` local member JVMs forming one cluster (each lists all of them to join); every map has
    one synchronous backup (deploy/hazelcast/hazelcast.yaml), so one member's death loses nothing."""
    version = hz_version()
    cluster_name = f"obf-test-{label}-{uuid.uuid4().hex[:8]}"
    ports = [free_port() for _ in range(n)]
    peers = tuple(f"127.0.0.1:{p}" for p in ports)
    members = [LocalMember(port=p, cluster_name=cluster_name, lib_dir=lib_dir(version), peers=peers,
                           workdir=Path(tempfile.mkdtemp(prefix=f"obf-hz-{label}{i}-"))) for i, p in enumerate(ports)]
    cluster = HzCluster(list(peers), cluster_name, "local", member=members[0], local_members=members)
    try:
        for m in members:
            m.start()
    except Exception:
        cluster.stop()
        raise
    cluster.version = members[0].version()
    _check_version(cluster, version)
    return cluster


def cluster_size(client: hazelcast.HazelcastClient) -> int:
    """Members the client currently sees in the cluster."""
    return len(client.cluster_service.get_members())


def _check_version(cluster: HzCluster, wanted: str) -> None:
    if cluster.version is not None and cluster.version.split("-")[0] != wanted:
        cluster.stop()
        raise RuntimeError(f"member reports version {cluster.version}, the tests asked for {wanted}")


def _start_container(cluster_name: str) -> HzCluster:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    container = (
        DockerContainer(f"hazelcast/hazelcast:{hz_version()}")
        .with_env("HZ_CLUSTERNAME", cluster_name)
        .with_env("HZ_JET_ENABLED", "true")
        # The client must reach the member at the host-mapped port, not its container IP.
        .with_env("HZ_NETWORK_PUBLICADDRESS", f"127.0.0.1:{port}")
        .with_bind_ports(5701, port)
    )
    container.start()
    wait_for_logs(container, "is STARTED", timeout=120)
    logs = container.get_logs()[0].decode(errors="replace")
    match = re.search(r"\[(\d+\.\d+\.\d+)\] Hazelcast", logs)
    return HzCluster([f"127.0.0.1:{port}"], cluster_name, "docker",
                     version=match.group(1) if match else hz_version(), _container=container)


def server_version(client: hazelcast.HazelcastClient) -> str:
    """The connected member's version, e.g. ``5.5.0`` (from the client's connection handshake)."""
    conn = client._connection_manager.get_random_connection()  # no public API for this
    v = getattr(conn, "server_version", None)
    if not isinstance(v, int) or v <= 0:
        return "unknown"
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
