"""Outbound delivery: the webhook channel (Standard Webhooks signatures) and Telegram.

Transient failures (timeouts, connection errors, 5xx, 429) are retried with exponential
backoff and jitter inside the delivery deadline; any other 4xx fails at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import aiohttp
from standardwebhooks import Webhook

from shared.contracts import SlotDue, TelegramChannel, WebhookChannel


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    attempts: int
    error_class: str = ""
    error: str = ""


class _Transient(Exception):
    def __init__(self, error_class: str, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error_class = error_class
        self.retry_after = retry_after


class _Permanent(Exception):
    def __init__(self, error_class: str, error: str) -> None:
        super().__init__(error)
        self.error_class = error_class


@lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    """One Standard Webhooks signer per secret (it decodes the secret once)."""
    return Webhook(secret)


DEFAULT_TEMPLATE = "Lite Claw heartbeat for {local:%A %d %B %Y, %H:%M} ({timezone})"


class Template:
    """The message text: ``str.format`` fields ``local`` (the slot's local datetime),
    ``timezone``, ``user_id`` and ``job_type``."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Fail at start-up, not at 09:00 for every user.
        try:
            text.format(local=datetime.now(UTC), timezone="UTC", user_id="u", job_type="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"HEARTBEAT_TEMPLATE is not a valid template: {exc!r}") from None

    def render(self, slot: SlotDue) -> str:
        return self.text.format(
            local=datetime.fromisoformat(slot.local_time),
            timezone=slot.timezone,
            user_id=slot.user_id,
            job_type=slot.job_type,
        )


def _classify(response: aiohttp.ClientResponse) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        retry_after = None
        header = response.headers.get("retry-after")
        if header and header.strip().isdigit():
            retry_after = float(header)
        raise _Transient(f"HTTP{status}", f"receiver answered {status}", retry_after)
    raise _Permanent(f"HTTP{status}", f"receiver answered {status}")


class Sender:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        *,
        attempt_timeout: float,
        deadline: float,
        telegram_api_base: str,
        telegram_bot_token: str | None,
    ) -> None:
        self.client = client
        self.attempt_timeout = attempt_timeout
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)
        self.deadline = deadline
        self.telegram_api_base = telegram_api_base.rstrip("/")
        self.telegram_bot_token = telegram_bot_token

    async def deliver(self, slot: SlotDue, text: str) -> DeliveryResult:
        started = time.monotonic()
        attempts = 0
        backoff = 0.2
        while True:
            attempts += 1
            try:
                await self._attempt(slot, text)
                return DeliveryResult(True, attempts)
            except _Permanent as exc:
                return DeliveryResult(False, attempts, exc.error_class, str(exc))
            except _Transient as exc:
                wait = exc.retry_after if exc.retry_after is not None else backoff
                wait = wait * (0.5 + random.random())  # jitter spreads retries of a burst
                if time.monotonic() - started + wait >= self.deadline:
                    return DeliveryResult(False, attempts, exc.error_class, str(exc))
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, 10.0)

    async def _attempt(self, slot: SlotDue, text: str) -> None:
        try:
            if isinstance(slot.channel, WebhookChannel):
                await self._webhook(slot, slot.channel, text)
            elif isinstance(slot.channel, TelegramChannel):
                await self._telegram(slot, slot.channel, text)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError subclasses
            raise _Transient("Timeout", f"no answer within {self.attempt_timeout}s") from exc
        except aiohttp.ClientConnectionError as exc:
            # The class names the failure (ClientConnectorError: could not connect;
            # ServerDisconnectedError: the receiver hung up); never the message, which
            # can carry the request URL and, for Telegram, the bot token.
            raise _Transient(type(exc).__name__, "could not reach the receiver") from exc
        except aiohttp.ClientError as exc:
            # A response that is not valid HTTP (ClientResponseError from the parser, e.g.
            # a body after a 204) or a broken payload: the receiver's fault, not ours, and
            # perhaps passing (a proxy restarting), so retried within the deadline and then
            # recorded as failed, never left to the consumer's infrastructure retry.
            raise _Transient(type(exc).__name__, "receiver sent an invalid response") from exc

    async def _webhook(self, slot: SlotDue, channel: WebhookChannel, text: str) -> None:
        body = json.dumps(
            {
                "type": "heartbeat",
                "slot_key": slot.slot_key,
                "job_id": str(slot.job_id),
                "user_id": slot.user_id,
                "scheduled_for": slot.scheduled_for.isoformat(),
                "local_time": slot.local_time,
                "timezone": slot.timezone,
                "text": text,
            }
        )
        now = datetime.now(UTC)
        signature = _signer(channel.secret).sign(slot.slot_key, now, body)
        async with self.client.post(
            channel.url,
            data=body.encode(),
            headers={
                "content-type": "application/json",
                "webhook-id": slot.slot_key,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature,
            },
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            await response.read()  # drain, so the connection goes back to the pool
            _classify(response)

    async def _telegram(self, slot: SlotDue, channel: TelegramChannel, text: str) -> None:
        if not self.telegram_bot_token:
            raise _Permanent("ConfigurationError", "TELEGRAM_BOT_TOKEN is not set")
        async with self.client.post(
            f"{self.telegram_api_base}/bot{self.telegram_bot_token}/sendMessage",
            json={"chat_id": channel.chat_id, "text": text},
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            await response.read()
            _classify(response)
