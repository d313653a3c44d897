"""The HTTP edge every service shares: health, readiness, metrics, bearer auth on /v1,
and one error shape naming the field and the reason."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ApiError(Exception):
    """A use-case error the edge turns into a 4xx with a field and a reason."""

    def __init__(self, status: int, error: str, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.field = field


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def bearer_auth(token: str) -> Callable[..., Awaitable[None]]:
    scheme = HTTPBearer(auto_error=False)
    expected = token.encode()

    async def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(scheme),  # noqa: B008
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not credentials or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (Authorization: Bearer <LITECLAW_API_TOKEN>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            reason = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            field = _field_name(err.get("loc", ()))
            if err.get("type") == "json_invalid":
                # pydantic locates a JSON syntax error by character offset; name the body.
                reason = f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot parse')}"
                field = "body"
            elif tuple(err.get("loc", ())) == ("body",):
                reason = "the request body must be a JSON object (Content-Type: application/json)"
            errors.append({"field": field, "reason": reason})
        return JSONResponse(status_code=422, content={"error": "invalid_request", "errors": errors})

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.error, "reason": exc.reason}
        if exc.field:
            body["errors"] = [{"field": exc.field, "reason": exc.reason}]
        return JSONResponse(status_code=exc.status, content=body)


def install_health_routes(
    app: FastAPI,
    *,
    registry: CollectorRegistry,
    readiness: Callable[[], Awaitable[dict[str, str]]],
) -> None:
    """/healthz: the process answers. /readyz: 200 only while every dependency works,
    else 503 naming what is down. /metrics: Prometheus text."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await readiness()
        down = sorted(name for name, state in checks.items() if state != "ok")
        status = 200 if not down else 503
        return JSONResponse(
            status_code=status,
            content={
                "status": "ready" if not down else "not ready",
                "down": down,
                "checks": checks,
            },
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
