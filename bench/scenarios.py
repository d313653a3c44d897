"""The benchmark scenarios of the heartbeat issue: burst, idle cost, steady lateness, and
the raw limits of the parts in the same run."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats

from bench.harness import (
    RssSampler,
    Stack,
    received,
    received_count,
    receiver,
    register_jobs,
    say,
    stack,
    summary,
    wait_indexed,
    write_result,
)

TARGETS = {
    "burst_50000_max_seconds": 25,
    "burst_min_deliveries_per_s": 2000,
    "steady_p99_lateness_s": 1.0,
    "idle_cpu_ratio_max": 1.5,
    "service_rss_max_mib": 300,
}


def _slot_time(slot_key: str) -> datetime:
    # <job>:v<version>:<local iso with offset>
    return datetime.fromisoformat(slot_key.split(":v", 1)[1].split(":", 1)[1]).astimezone(UTC)


def _outcomes(s: Stack) -> dict[str, int]:
    return dict(s.sql("SELECT outcome, count(*) FROM heartbeat.deliveries GROUP BY 1"))  # type: ignore[arg-type]


def _sent_twice(s: Stack) -> int:
    rows = s.sql(
        "SELECT count(*) FROM (SELECT slot_key FROM heartbeat.deliveries "
        "WHERE outcome = 'sent' GROUP BY slot_key HAVING count(*) > 1) d"
    )
    return int(rows[0][0])


def burst(n: int, heartbeats: int = 1) -> dict[str, Any]:
    name = f"burst_{n}" if heartbeats == 1 else f"burst_{n}_x{heartbeats}"
    say(f"burst: {n} jobs due at the same second, {heartbeats} heartbeat instance(s)")
    with stack(heartbeats=heartbeats) as s, receiver() as hook:
        lead = 30 + n / 1500  # time to register and index the jobs
        due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
        cron = f"{due.second} {due.minute} {due.hour} * * *"
        t0 = time.time()
        register_jobs(s, [cron] * n, hook, users=max(1, n // 10))
        say(f"  registered {n} jobs in {time.time() - t0:.1f}s")
        wait_indexed(s, n, due.timestamp() - 1)
        say(f"  indexed; due at {due.isoformat()} (in {due.timestamp() - time.time():.1f}s)")
        with RssSampler(s.pids()) as rss:
            deadline = due.timestamp() + 180
            while time.time() < deadline:
                time.sleep(1)
                if received_count(hook)["keys"] >= n and sum(_outcomes(s).values()) >= n:
                    break
            time.sleep(2)  # catch stragglers and duplicates
        got = received(hook)
        connections = received_count(hook)["connections"]
        arrivals = [v[0] - due.timestamp() for v in got.values()]
        duplicates = sum(int(v[1]) - 1 for v in got.values())
        outcomes = _outcomes(s)
        # Each pump of a follower (relay, deliveries projection) that found events
        # updates its tracking row once: fewer, larger pumps cost less per event.
        pumps = s.sql(
            "SELECT n_tup_upd FROM pg_stat_user_tables "
            "WHERE schemaname = 'heartbeat' AND relname = 'tracking'"
        )[0][0]
        last = max(arrivals) if arrivals else float("nan")
        cpu = {name: round(v, 1) for name, v in rss.cpu_seconds().items()}
        figures = {
            "n": n,
            "heartbeat_instances": heartbeats,
            "receiver_connections": connections,
            "heartbeat_follower_pumps": pumps,
            "seconds": round(last, 3),
            "deliveries_per_s": round(len(got) / last, 1) if arrivals and last > 0 else 0,
            "p50_lateness_s": summary(arrivals)["p50"],
            "p99_lateness_s": summary(arrivals)["p99"],
            "max_lateness_s": summary(arrivals)["max"],
            "received": len(got),
            "duplicates": duplicates,
            "sent_twice_in_store": _sent_twice(s),
            "missing": n - sum(outcomes.values()),
            "outcomes": outcomes,
            "peak_rss_mib": rss.result(),
            "cpu_seconds": cpu,
            "cpu_ms_per_slot": round(sum(cpu.values()) * 1000 / n, 3),
            "limits": TARGETS,
        }
    say(
        f"  n={n}: last delivery {figures['seconds']}s after due, "
        f"{figures['deliveries_per_s']}/s, p50 {figures['p50_lateness_s']}s, "
        f"p99 {figures['p99_lateness_s']}s, duplicates {duplicates}, missing {figures['missing']}"
    )
    say(f"  peak RSS MiB: {figures['peak_rss_mib']}")
    say(f"  CPU seconds: {cpu} ({figures['cpu_ms_per_slot']} ms per slot, all processes)")
    write_result(name, figures)
    return figures


async def _fill_due_index(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE scheduler.jobs")
        now = datetime.now(UTC)
        chunk = 100_000
        for start in range(0, n, chunk):
            rows = [
                (
                    f"00000000-0000-4000-8000-{i:012d}",
                    f"u{i}",
                    "heartbeat",
                    "0 9 * * *",
                    1,
                    '{"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "x"}',
                    "UTC",
                    True,
                    False,
                    True,
                    # None due in the next hour: spread over hours 2..26 from now.
                    now + timedelta(hours=2, seconds=i % 86400),
                    now + timedelta(hours=2, seconds=i % 86400),
                    f"k{i}",
                    "local",
                    now,
                    now,
                )
                for i in range(start, min(n, start + chunk))
            ]
            await conn.copy_records_to_table(
                "jobs",
                schema_name="scheduler",
                records=rows,
                columns=[
                    "job_id",
                    "user_id",
                    "job_type",
                    "schedule_cron",
                    "schedule_version",
                    "channel",
                    "timezone",
                    "enabled",
                    "deleted",
                    "heartbeats_enabled",
                    "slot_at",
                    "next_fire_at",
                    "slot_key",
                    "local_time",
                    "created_at",
                    "updated_at",
                ],
            )
        await conn.execute("ANALYZE scheduler.jobs")
    finally:
        await conn.close()


def _idle_window(s: Stack, seconds: float) -> dict[str, float]:
    import psutil

    proc = psutil.Process(s.services["scheduler"].pid)
    cpu0 = proc.cpu_times()
    sum0 = s.metric("scheduler", "liteclaw_scheduler_tick_seconds_sum", 'found="idle"')
    cnt0 = s.metric("scheduler", "liteclaw_scheduler_tick_seconds_count", 'found="idle"')
    time.sleep(seconds)
    cpu1 = proc.cpu_times()
    sum1 = s.metric("scheduler", "liteclaw_scheduler_tick_seconds_sum", 'found="idle"')
    cnt1 = s.metric("scheduler", "liteclaw_scheduler_tick_seconds_count", 'found="idle"')
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    ticks = cnt1 - cnt0
    return {
        "cpu_s_per_minute": round(cpu * 60 / seconds, 4),
        "ticks": ticks,
        "mean_tick_ms": round((sum1 - sum0) / ticks * 1000, 3) if ticks else float("nan"),
    }


def idle(big: int = 1_000_000, small: int = 1_000, seconds: float = 30) -> dict[str, Any]:
    say(f"idle cost: {big} registered jobs vs {small}, none due within the hour")
    with stack(services=("scheduler",)) as s:
        results = {}
        for n in (small, big):
            t0 = time.time()
            asyncio.run(_fill_due_index(s.pg.url, n))
            say(f"  {n} rows in the due index ({time.time() - t0:.1f}s); measuring {seconds}s")
            time.sleep(2)
            results[n] = _idle_window(s, seconds)
            say(f"  {n}: {results[n]}")
        ratio = results[big]["cpu_s_per_minute"] / max(results[small]["cpu_s_per_minute"], 1e-9)
        tick_ratio = results[big]["mean_tick_ms"] / max(results[small]["mean_tick_ms"], 1e-9)
    figures = {
        "n": big,
        "jobs_small": small,
        "jobs_big": big,
        "small": results[small],
        "big": results[big],
        "cpu_ratio": round(ratio, 3),
        "tick_time_ratio": round(tick_ratio, 3),
        "seconds_per_window": seconds,
        "note": "rows are written straight into the due index (COPY); the ticker reads only it",
        "limits": TARGETS,
    }
    say(f"  CPU ratio {figures['cpu_ratio']}, tick-time ratio {figures['tick_time_ratio']}")
    write_result("idle_cost", figures)
    return figures


def steady(rate: int = 200, seconds: int = 60) -> dict[str, Any]:
    n = rate * seconds
    say(f"steady: {rate} slots/s for {seconds}s ({n} slots)")
    with stack() as s, receiver() as hook:
        # Job i fires once a minute at second i % 60: `rate` slots in every second.
        crons = [f"{i % 60} * * * * *" for i in range(n)]
        register_jobs(s, crons, hook, users=max(1, n // 10))
        wait_indexed(s, n, time.time() + 120)
        start = (datetime.now(UTC) + timedelta(seconds=61)).replace(second=0, microsecond=0)
        window_end = start + timedelta(seconds=seconds)
        say(f"  indexed; measuring slots due in [{start.time()}, {window_end.time()})")
        with RssSampler(s.pids()) as rss:
            while time.time() < window_end.timestamp() + 15:
                time.sleep(1)
        got = received(hook)
        late = []
        for key, (arrival, _count) in got.items():
            due = _slot_time(key)
            if start <= due < window_end:
                late.append(arrival - due.timestamp())
        stats = summary(late)
    figures = {
        "n": len(late),
        "expected": n,
        "rate_per_s": rate,
        "seconds": seconds,
        "p50_lateness_s": stats["p50"],
        "p99_lateness_s": stats["p99"],
        "max_lateness_s": stats["max"],
        "peak_rss_mib": rss.result(),
        "limits": TARGETS,
    }
    say(
        f"  {len(late)}/{n} slots: lateness p50 {stats['p50']}s p99 {stats['p99']}s "
        f"max {stats['max']}s"
    )
    write_result("steady_lateness", figures)
    return figures


async def _jetstream_rate(url: str, n: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    body = b"x" * 400  # about the size of a SlotDue
    t0 = time.perf_counter()
    for start in range(0, n, 256):
        await asyncio.gather(
            *(
                js.publish("bench.slot", body, headers={"Nats-Msg-Id": f"m{i}"})
                for i in range(start, min(n, start + 256))
            )
        )
    publish = n / (time.perf_counter() - t0)
    sub = await js.pull_subscribe("bench.slot", durable="bench")
    t0 = time.perf_counter()
    done = 0
    while done < n:
        msgs = await sub.fetch(256, timeout=5)
        await asyncio.gather(*(m.ack() for m in msgs))
        done += len(msgs)
    consume = n / (time.perf_counter() - t0)
    await nc.close()
    return {"publish_per_s": round(publish), "consume_ack_per_s": round(consume)}


async def _postgres_rate(url: str, n: int) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE bench_rows (k text PRIMARY KEY, v text, t timestamptz)")
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    await conn.executemany(
        "INSERT INTO bench_rows VALUES ($1, $2, $3)", [(f"k{i}", "v", now) for i in range(n)]
    )
    rate = n / (time.perf_counter() - t0)
    await conn.close()
    return {"insert_rows_per_s": round(rate)}


def _eventstore_rate(url: str, n: int) -> dict[str, float]:
    from eventsourcing.application import Application

    from services.heartbeat.domain import Delivery
    from shared.eventstore import ensure_schema, postgres_env

    ensure_schema(url, "bench_store")
    app = Application(env=postgres_env(url, "bench_store"))
    now = datetime.now(UTC)
    from uuid import uuid4

    records = [Delivery.sent(f"s{i}", uuid4(), "u", now, 1) for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        app.save(*records[start : start + 1000])
    batched = n / (time.perf_counter() - t0)
    singles = [Delivery.sent(f"one{i}", uuid4(), "u", now, 1) for i in range(500)]
    t0 = time.perf_counter()
    for record in singles:
        app.save(record)
    single = len(singles) / (time.perf_counter() - t0)
    app.close()
    return {"save_batched_per_s": round(batched), "save_one_each_per_s": round(single)}


def limits(n: int = 50_000) -> dict[str, Any]:
    say(f"limits of the parts: {n} JetStream messages, {n} PostgreSQL rows")
    with stack(services=()) as s:
        js = asyncio.run(_jetstream_rate(s.nats.url, n))
        pg = asyncio.run(_postgres_rate(s.pg.url, n))
        es = _eventstore_rate(s.pg.url, min(n, 20_000))
    figures = {"n": n, "jetstream": js, "postgres": pg, "eventstore": es}
    say(f"  JetStream {js}; PostgreSQL {pg}; event store {es}")
    write_result("limits", figures)
    return figures
