"""Unit-test fixtures: ``workers`` builds workers on fake grids (``tests.fakes``) and closes every
one it built at teardown, passed or failed (as arq's worker fixtures do)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fakes import WorkerFactory


@pytest.fixture
def workers() -> Iterator[WorkerFactory]:
    from tests.fakes import WorkerFactory  # the engine loads only for tests that use workers

    factory = WorkerFactory()
    yield factory
    factory.close_all()
