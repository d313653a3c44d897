"""The `liteclaw` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from liteclaw.up import run_up

    return run_up(args.data_dir, args.port_base, args.ready_timeout)


def _preview(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from services.scheduler.schedule import CronSpec, ScheduleError, parse_zone, upcoming

    try:
        spec = CronSpec.parse(args.cron, field="--cron")
        zone = parse_zone(args.tz, field="--tz")
    except ScheduleError as exc:
        print(f"liteclaw: {exc.field}: {exc.reason}", file=sys.stderr)
        return 2
    if args.start is None:
        start = datetime.now(UTC)
    else:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            print(f"liteclaw: --from: not an ISO 8601 instant: {args.start!r}", file=sys.stderr)
            return 2
        if start.tzinfo is None:
            print(
                "liteclaw: --from: give a UTC offset (e.g. 2026-10-25T00:00:00Z); "
                "a naive time is ambiguous",
                file=sys.stderr,
            )
            return 2
    slots = upcoming(spec, zone, start, args.count, job_id=args.job_id, schedule_version=1)
    print(f"{'utc':<27}{'local':<27}slot key")
    for slot in slots:
        print(f"{slot.at.isoformat():<27}{slot.local_iso:<27}{slot.key}")
    return 0


def _heartbeat_run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from services.scheduler.bootstrap import run_once_main
    from shared.logs import setup_logging
    from shared.settings import SchedulerSettings

    try:
        settings = SchedulerSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        print(f"liteclaw heartbeat run: bad settings:\n{exc}", file=sys.stderr)
        return 2
    setup_logging("scheduler", settings.log_level)
    return run_once_main(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteclaw",
        description="Lite Claw backend: run the system locally and operate it.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    up = verbs.add_parser(
        "up",
        help="run NATS, PostgreSQL and all five services, supervised",
        description=(
            "Start a local NATS (JetStream) and PostgreSQL under DIR unless NATS_URL / "
            "DATABASE_URL are set, then auth, claims, heartbeat, scheduler and monitor on "
            "ports N+1..N+5. Restarts a crashed service with backoff, writes "
            "DIR/endpoints.json when all are ready, and drains cleanly on Ctrl-C/SIGTERM. "
            "Data under DIR survives restarts."
        ),
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".data"),
        metavar="DIR",
        help="where local server data, logs and endpoints.json live (default: .data)",
    )
    up.add_argument(
        "--port-base",
        type=int,
        default=8100,
        metavar="N",
        help="services listen on N+1..N+5 (default: 8100)",
    )
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up if not every service is ready after S seconds (default: 120)",
    )
    up.set_defaults(func=_up)

    heartbeats = verbs.add_parser(
        "heartbeats", help="inspect heartbeat schedules", description="Inspect heartbeat schedules."
    )
    hb_verbs = heartbeats.add_subparsers(dest="heartbeats_verb", metavar="VERB", required=True)
    preview = hb_verbs.add_parser(
        "preview",
        help="list the next slots of a cron in a time zone",
        description=(
            "List the next slots (UTC instant, local time with offset, slot key) of CRON in "
            "ZONE, computed by the very code the scheduler fires with, DST rules included."
        ),
    )
    preview.add_argument(
        "--cron",
        required=True,
        metavar="C",
        help="5 fields, or 6 with a leading seconds field, e.g. '30 1 * * *'",
    )
    preview.add_argument("--tz", required=True, metavar="Z", help="IANA zone, e.g. Europe/London")
    preview.add_argument(
        "--from",
        dest="start",
        metavar="T",
        help="start after this instant, ISO 8601 with offset (default: now)",
    )
    preview.add_argument(
        "--count", type=int, default=10, metavar="N", help="how many slots (default: 10)"
    )
    preview.add_argument(
        "--job-id",
        default="preview",
        metavar="ID",
        help="job id to put in the slot keys (default: preview)",
    )
    preview.set_defaults(func=_preview)

    heartbeat = verbs.add_parser(
        "heartbeat", help="drive the scheduler", description="Drive the scheduler."
    )
    hb = heartbeat.add_subparsers(dest="heartbeat_verb", metavar="VERB", required=True)
    run = hb.add_parser(
        "run",
        help="one scheduler tick, then exit (for cron-driven deployments)",
        description=(
            "Bring the due index up to date, emit every slot due now (misfire rules "
            "included) and exit, with the same exactly-once guarantees as the scheduler "
            "service. Reads NATS_URL, DATABASE_URL, LITECLAW_API_TOKEN, HEARTBEAT_JOB_TYPE, "
            "MISFIRE_GRACE from the environment."
        ),
    )
    run.set_defaults(func=_heartbeat_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
