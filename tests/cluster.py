"""How the test suite gets a real Hazelcast cluster.

Chosen by settings, in this order:
1. ``OBF_TEST_HZ_MEMBERS=host:port[,host:port]`` (+ ``OBF_TEST_HZ_CLUSTER``, default ``dev``):
   an external cluster; nothing is started or stopped.
2. A Docker engine that answers: the official ``hazelcast/hazelcast`` image via testcontainers.
3. Otherwise: a local member JVM from the open-source jars (``obf_features_worker.dev.member``),
   on a free port with a unique cluster name, stopped at the end even if tests fail.
``OBF_TEST_HZ_MODE=external|docker|local`` forces one of them.
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

HZ_IMAGE_VERSION = "5.5.0"


@dataclass
class HzCluster:
    """A running cluster the tests may use; ``restart``/``kill_member`` only where we own it."""

    members: list[str]
    cluster_name: str
    kind: str  # "external" | "docker" | "local"
    version: str | None = None
    member: LocalMember | None = None
    _container: Any = field(default=None, repr=False)

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

    def stop(self) -> None:
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
    workdir = Path(tempfile.mkdtemp(prefix=f"obf-hz-{label}-"))
    member = LocalMember(port=free_port(), cluster_name=cluster_name, workdir=workdir)
    member.start()
    return HzCluster([member.address], cluster_name, "local", version=member.version(), member=member)


def _start_container(cluster_name: str) -> HzCluster:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    container = (
        DockerContainer(f"hazelcast/hazelcast:{HZ_IMAGE_VERSION}")
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
                     version=match.group(1) if match else HZ_IMAGE_VERSION, _container=container)


def server_version(client: hazelcast.HazelcastClient) -> str:
    """The connected member's version, e.g. ``5.5.0`` (from the client's connection handshake)."""
    conn = client._connection_manager.get_random_connection()  # no public API for this
    v = getattr(conn, "server_version", None)
    if not isinstance(v, int) or v <= 0:
        return "unknown"
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
