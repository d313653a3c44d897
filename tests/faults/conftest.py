"""Fixtures of the fault tests: each test gets a private stack (see ``_support.Stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from liteclaw.localservers import LocalPostgres
from tests.faults._support import Stack, make_stack


@pytest.fixture
def stack(pg_server: LocalPostgres) -> Iterator[Stack]:
    """Its own NATS, a fresh database on the session PostgreSQL."""
    with make_stack(pg_server) as s:
        yield s


@pytest.fixture
def stack_own_pg() -> Iterator[Stack]:
    """Its own NATS and its own PostgreSQL, which the test may stop and start."""
    with make_stack(None) as s:
        yield s
