"""End-to-end fixtures: `liteclaw up` systems that are stopped even when a test fails,
the real webhook and OTLP receivers, and an HTTP client."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e._system import Liteclaw
from tests.support.receivers import otlp_receiver, webhook_receiver  # noqa: F401 - fixtures


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def liteclaw(request: pytest.FixtureRequest) -> Iterator[Liteclaw]:
    runner = Liteclaw()
    try:
        yield runner
    finally:
        failed = request.node.stash.get(_FAILED, False)
        runner.cleanup(keep_files=failed)
        if failed:
            print(f"liteclaw up data and logs kept in {runner.root}", file=sys.stderr)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as client:
        yield client
