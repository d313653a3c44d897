"""`make bench` / `python -m bench`: run the benchmarks and print and write their figures."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from bench import scenarios
from bench.harness import RESULTS, say, write_result


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Lite Claw benchmarks against real NATS, PostgreSQL and services. "
        "Each writes bench/results/<name>.json; bench/results/summary.json keeps the latest "
        "figures of every benchmark run so far.",
    )
    parser.add_argument(
        "--only",
        choices=["limits", "burst", "idle", "steady"],
        action="append",
        help="run only these (repeatable); default: all",
    )
    parser.add_argument("--burst-sizes", default="10000,50000", help="comma-separated N")
    parser.add_argument(
        "--heartbeat-instances",
        default="1,2",
        metavar="K[,K...]",
        help="heartbeat instances sharing the consumer, one burst run per value and size "
        "(default 1,2); results of K > 1 are written as burst_<N>_x<K>.json",
    )
    parser.add_argument("--idle-jobs", type=int, default=1_000_000)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--steady-rate", type=int, default=200)
    parser.add_argument("--steady-seconds", type=int, default=60)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server and service a scenario started is
    # stopped and its temporary directory removed.
    signal.signal(signal.SIGTERM, _terminate)
    chosen = args.only or ["limits", "burst", "idle", "steady"]
    results: dict[str, object] = {}
    if "limits" in chosen:
        results["limits"] = scenarios.limits()
    if "burst" in chosen:
        for k in (int(x) for x in args.heartbeat_instances.split(",") if x):
            for n in (int(x) for x in args.burst_sizes.split(",") if x):
                results[f"burst_{n}" if k == 1 else f"burst_{n}_x{k}"] = scenarios.burst(n, k)
    if "idle" in chosen:
        results["idle_cost"] = scenarios.idle(args.idle_jobs, seconds=args.idle_seconds)
    if "steady" in chosen:
        results["steady_lateness"] = scenarios.steady(args.steady_rate, args.steady_seconds)
    limits = results.get("limits")
    if isinstance(limits, dict):
        for name, figures in results.items():
            if name.startswith("burst_") and isinstance(figures, dict):
                figures["fraction_of_jetstream_publish"] = round(
                    figures["deliveries_per_s"] / limits["jetstream"]["publish_per_s"], 3
                )
                figures["fraction_of_postgres_insert"] = round(
                    figures["deliveries_per_s"] / limits["postgres"]["insert_rows_per_s"], 3
                )
                figures["fraction_of_jetstream_consume"] = round(
                    figures["deliveries_per_s"] / limits["jetstream"]["consume_ack_per_s"], 3
                )
                figures["fraction_of_eventstore_batched_save"] = round(
                    figures["deliveries_per_s"] / limits["eventstore"]["save_batched_per_s"], 3
                )
                write_result(name, figures)
    say("\nsummary:")
    say(json.dumps(results, indent=2, default=str))
    # The summary keeps the latest figures of every benchmark, so a partial run
    # (--only) updates its own entries and leaves the others.
    summary_file = RESULTS / "summary.json"
    merged: dict[str, object] = {}
    if summary_file.exists():
        try:
            merged = json.loads(summary_file.read_text())
        except ValueError:
            merged = {}
    merged.update(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted: every server and service this run started is stopped")
        sys.exit(130)
