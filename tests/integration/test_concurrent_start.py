"""Several instances of a service started at the same moment on a fresh database all
come up: they create the schema and its tables one at a time, so none fails on the
race PostgreSQL's ``CREATE ... IF NOT EXISTS`` loses (a unique violation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from liteclaw.localservers import LocalNats
from tests.support.processes import ServiceProcess, start_service, wait_ready


@pytest.mark.parametrize("service", ["scheduler", "heartbeat"])
def test_instances_started_together_on_a_fresh_database_all_get_ready(
    service: str, nats_server: LocalNats, database_url: str, log_dir: Path
) -> None:
    # 1. Four instances, launched without waiting for one another.
    instances: list[ServiceProcess] = [
        start_service(
            service,
            nats_url=nats_server.url,
            database_url=database_url,
            log_dir=log_dir,
            wait=False,
        )
        for _ in range(4)
    ]
    try:
        # 2. Every one becomes ready (wait_ready fails at once if one exits).
        for instance in instances:
            try:
                wait_ready(instance.url, timeout=90, proc=instance.proc)
            except (RuntimeError, TimeoutError) as exc:
                log = instance.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{instance.url}: {exc}\n{log}") from None
    finally:
        for instance in instances:
            instance.stop()
