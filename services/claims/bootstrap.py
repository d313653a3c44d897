"""Composition root of the claims process (process shell; claim codes come with their issue)."""

from __future__ import annotations

from eventsourcing.application import Application
from fastapi import APIRouter

from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings


class ClaimsApplication(Application):
    name = "claims"


def build(settings: ServiceSettings) -> tuple[ServiceRuntime, list[APIRouter]]:
    runtime = ServiceRuntime(
        name="claims",
        settings=settings,
        application_factory=lambda env: ClaimsApplication(env=env),
        translate=lambda event, event_id: None,
    )
    return runtime, []


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(ServiceSettings())  # type: ignore[call-arg]
    serve(runtime, routers)
