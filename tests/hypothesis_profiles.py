"""Hypothesis profiles, loaded once by tests/conftest.py: ``ci`` (the default, what ``make test``
runs) and ``dev`` (quick local runs): ``HYPOTHESIS_PROFILE=dev make test-unit``.

Tests do not hard-code example counts; a test whose state space needs more than the profile's
budget asks for a multiple of it with ``scaled()``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("dev", max_examples=25, **_COMMON)


def load() -> str:
    """Load the profile named by HYPOTHESIS_PROFILE (default ``ci``); returns its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    settings.load_profile(name)
    return name


def scaled(factor: int) -> int:
    """``factor`` times the loaded profile's example budget (for a larger state space)."""
    return factor * settings.default.max_examples
