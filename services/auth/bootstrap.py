"""Composition root of the auth process (process shell; OAuth comes with its issue)."""

from __future__ import annotations

from eventsourcing.application import Application
from fastapi import APIRouter

from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings


class AuthApplication(Application):
    name = "auth"


def build(settings: ServiceSettings) -> tuple[ServiceRuntime, list[APIRouter]]:
    runtime = ServiceRuntime(
        name="auth",
        settings=settings,
        application_factory=lambda env: AuthApplication(env=env),
        translate=lambda event, event_id: None,
    )
    return runtime, []


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(ServiceSettings())  # type: ignore[call-arg]
    serve(runtime, routers)
