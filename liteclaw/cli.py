"""The `liteclaw` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from liteclaw.up import run_up

    return run_up(args.data_dir, args.port_base, args.ready_timeout)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
