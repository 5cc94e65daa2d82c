"""The one place a Hazelcast client of ours is built.

``make_client()`` gives every client the same guarantees, whoever builds it (worker, feeder,
inspection commands, adapter, tests):
- ``default_int_type=IntType.LONG``: ``bar_idx`` keys are Java ``Long`` (SQL ``BIGINT``) everywhere;
  with the client's default (``Integer``) a ``get(bar_idx)`` would find nothing.
- TLS/authentication settings from the environment (``security.tls_auth_settings``) unless given.
- pickled values refused (``pickle_guard.refuse_pickle``) before any value can be read.
- the reactor wake-up fix (``reactor_fix``) installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import hazelcast.client
from hazelcast.client import HazelcastClient
from hazelcast.config import IntType

from obf_contract import reactor_fix
from obf_contract.pickle_guard import refuse_pickle
from obf_contract.security import tls_auth_settings

ClientFactory = Callable[..., Any]


def reconnect_settings(connect_timeout_s: float | None, backoff_max_s: float) -> dict[str, Any]:
    """Client keywords for how to (re)connect: give up after ``connect_timeout_s`` (None = keep
    trying forever), with a jittered backoff growing from 0.5 s to ``backoff_max_s``."""
    return dict(
        cluster_connect_timeout=-1 if connect_timeout_s is None else connect_timeout_s,
        retry_initial_backoff=min(0.5, backoff_max_s),
        retry_max_backoff=backoff_max_s,
        retry_multiplier=1.5,
        retry_jitter=0.2,
    )


def client_settings(cluster_name: str, members: Iterable[str], *, client_name: str | None = None,
                    security: Mapping[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """The keyword arguments ``make_client`` passes to ``hazelcast.HazelcastClient``.

    security: TLS/authentication keywords; None = from the environment (ValueError on a bad one).
    settings: any other client keywords (they cannot override the int type).
    """
    out: dict[str, Any] = dict(tls_auth_settings() if security is None else security)
    out.update(settings)
    out.update(cluster_name=cluster_name, cluster_members=list(members), default_int_type=IntType.LONG)
    if client_name is not None:
        out["client_name"] = client_name
    return out


def make_client(cluster_name: str, members: Iterable[str], *, client_name: str | None = None,
                security: Mapping[str, Any] | None = None,
                factory: ClientFactory | None = None, **settings: Any) -> HazelcastClient:
    """A ``HazelcastClient`` (or what ``factory`` builds from the same keywords) with LONG ints,
    the TLS/auth settings and pickled values refused. Raises what the client raises (e.g.
    ``IllegalStateError`` when a synchronous start times out), or RuntimeError when the pickle
    guard cannot be installed (the client is shut down first). factory None = ``HazelcastClient``."""
    reactor_fix.install()
    # Looked up per call, so a test can stand a fake in for hazelcast.client.HazelcastClient.
    build = hazelcast.client.HazelcastClient if factory is None else factory
    client: HazelcastClient = build(**client_settings(cluster_name, members, client_name=client_name, security=security,
                                       **settings))
    try:
        refuse_pickle(client)  # before any read or listener can deliver a value
    except RuntimeError:
        client.shutdown()
        raise
    return client
