"""End-to-end latency: from ``run.log()`` returning in a trainer to the update at WebSocket clients.

    .venv/bin/python -m bench.latency [--quick] [--seconds S] [--rate R] [--clients N]

The real processes: ``monitor worker`` and ``monitor gateway`` (each its own process), one
trainer process logging through the SDK at a paced rate, and the WebSocket clients in a
separate process (an asyncio loop holding them all). Every event carries its step, encoded in
``loss`` (the job view's ``loss`` is the newest step's), and the trainer records
``time.time()`` right after each ``run.log()`` returns. An update whose newest step is S
delivers every step after the previous update's up to S; each such event's latency at each
client is the client's arrival time (``time.time()`` on receipt) minus that event's return
time. All processes are on one machine, so they share one clock.

Every key is written under a fresh ``bench:<random>:`` prefix and deleted at the end; every
process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
import redis

from bench.common import (
    ClientResult,
    ClientSpec,
    Histogram,
    client_process,
    cpu_seconds,
    delete_prefix,
    free_port,
    headline,
    machine_busy_line,
    machine_cpu,
    machine_line,
    peak_rss_mb,
    receive,
    redis_cpu_seconds,
    redis_url,
    split_evenly,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    verdict,
    wait_for_quiet,
    wait_http_ok,
)
from monitor.keys import Keys
from monitor.records import public_state
from monitor.sdk import start_run

RATE = 1000  # events per second from the trainer
SECONDS, QUICK_SECONDS = 20.0, 5.0
CLIENTS = 100
EVAL_EVERY = 10  # every 10th event also carries eval_loss (a new best each time)
MODEL = "bench/Latency-7B"
BAR_P99_MS, GOAL_P99_MS = 50.0, 10.0
FINISH_TIMEOUT = 30.0  # seconds the clients get, after the last log(), to see the last step
ANSWER_TIMEOUT = 120.0  # seconds a child process gets to answer the parent


def loss_of(step: int) -> float:
    """The loss logged at ``step``: decreasing, and it gives the step back exactly."""
    return 2.0 - step * 1e-5


def step_of(loss: float) -> int:
    return round((2.0 - loss) * 1e5)


# --- The trainer process -----------------------------------------------------------------------


@dataclass
class TrainerReport:
    returned: array[float]  # time.time() right after run.log() returned, by step (0 unused)
    log_us: list[float]  # duration of each run.log() call
    late_ms: list[float]  # how far behind its due time each call started
    seconds: float  # first to last call
    dropped: int


def trainer_process(url: str, prefix: str, job_id: str, steps: int, rate: float,
                    conn: Connection) -> None:
    """Start a run, log step 0, then on "go" log steps 1..``steps`` at ``rate`` per second."""
    run = start_run(model_name=MODEL, job_id=job_id, total_epochs=1, redis_url=url,
                    prefix=prefix, buffer_size=steps + 100, flush_timeout=60.0)
    run.log(epoch=0, step=0, loss=loss_of(0))
    run.flush(30.0)
    conn.send("started")
    conn.recv()
    returned = array("d", bytes(8 * (steps + 1)))
    log_us: list[float] = []
    late_ms: list[float] = []
    clock, wall, log = time.perf_counter, time.time, run.log
    start = clock()
    for step in range(1, steps + 1):
        due = start + (step - 1) / rate
        delay = due - clock()
        if delay > 0:
            time.sleep(delay)
        t0 = clock()
        late_ms.append((t0 - due) * 1e3)
        if step % EVAL_EVERY:
            log(epoch=step / steps, step=step, loss=loss_of(step))
        else:
            log(epoch=step / steps, step=step, loss=loss_of(step), eval_loss=loss_of(step) + 0.1)
        returned[step] = wall()
        log_us.append((clock() - t0) * 1e6)
    seconds = clock() - start
    run.flush(60.0)
    conn.send(TrainerReport(returned, log_us, late_ms, seconds, run.stats.dropped))
    conn.recv()  # "close": only once the clients are done, so job_finished is not measured
    run.close()


# --- Measuring -----------------------------------------------------------------------------------


def entries_added(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xinfo_stream(stream)["entries-added"])
    except redis.ResponseError:
        return 0  # no stream yet


def committed_updates(client: redis.Redis, stream: str, after: str,
                      job_id: str) -> list[tuple[int, int]]:
    """(entry id ms, newest step of the job) of each update after ``after``, in order."""
    out = []
    cursor = after
    while entries := _xrange(client, stream, f"({cursor}"):
        for entry_id, fields in entries:
            for view in orjson.loads(fields[b"data"])["jobs"]:
                if view["id"] == job_id:
                    out.append((int(entry_id.split(b"-")[0]), step_of(view["loss"])))
        cursor = entries[-1][0].decode()
    return out


def _xrange(client: redis.Redis, stream: str, start: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    entries: Any = client.xrange(stream, min=start, count=5000)
    return list(entries or [])


@dataclass
class Latencies:
    end_to_end: Histogram  # log() returned -> at a client, every event at every client
    to_commit: Histogram  # log() returned -> its update's entry id (ms), every event
    to_client: Histogram  # entry id (ms) -> at a client, every update at every client
    newest: Histogram  # ts of the update's newest event (in log()) -> at a client
    quarters: list[Histogram]  # end_to_end of the events of each quarter of the run


def latencies(returned: array[float], commits: list[tuple[int, int]],
              results: list[ClientResult]) -> Latencies:
    out = Latencies(Histogram(), Histogram(), Histogram(), Histogram(),
                    [Histogram() for _ in range(4)])
    steps = len(returned) - 1
    previous = 0
    for ms, step in commits:
        for s in range(previous + 1, step + 1):
            out.to_commit.add(ms / 1000 - returned[s])
        previous = max(previous, step)
    for r in results:
        out.newest.merge(r.fresh)
        previous = 0
        for arrival, ms, loss in zip(r.arrivals, r.versions_ms, r.tags):
            step = step_of(loss)
            out.to_client.add(arrival - ms / 1000)
            for s in range(previous + 1, step + 1):
                out.end_to_end.add(arrival - returned[s])
                out.quarters[(s - 1) * 4 // steps].add(arrival - returned[s])
            previous = max(previous, step)
    return out


@dataclass
class Cpu:
    name: str
    where: str
    seconds: float
    peak_rss_mb: float | None


# --- Report ---------------------------------------------------------------------------------------


def _q(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def latency_table(lat: Latencies) -> str:
    rows = [
        ("**end to end**: log() returned → update at a client (every event × client)",
         lat.end_to_end),
        ("log() returned → update committed (`updates` entry id; every event)",
         lat.to_commit),
        ("update committed (`updates` entry id) → at a client (every update × client)",
         lat.to_client),
        (("newest event's `ts` (inside log()) → at a client, i.e. arrival − `updated_at` "
          "(every update × client)"), lat.newest),
    ]
    body = [[name, f"{h.count:,}", *h.row_ms()] for name, h in rows]
    return table(["ms", "samples", "p50", "p95", "p99", "max"], body,
                  align=["l", "r", "r", "r", "r", "r"])


def delivery_table(trainer: TrainerReport, steps: int, commits: list[tuple[int, int]],
                   expected: int, results: list[ClientResult]) -> str:
    sizes = []
    previous = 0
    for _, step in commits:
        sizes.append(step - previous)
        previous = max(previous, step)
    per_client = sorted(r.updates for r in results)
    complete = sum(1 for r in results if r.updates == expected and r.snapshots == 1)
    resyncs = sum(max(0, r.snapshots - 1) for r in results)
    closed = sum(1 for r in results if r.closed is not None)
    late = sorted(trainer.late_ms)
    body = [[
        f"{steps:,} in {trainer.seconds:.2f}s ({steps / trainer.seconds:,.0f}/s)",
        f"{_q(late, 0.5):.2f} / {_q(late, 0.99):.2f} / {late[-1]:.1f}",
        f"{statistics.median(trainer.log_us):.1f} / {max(trainer.log_us):,.0f}",
        f"{len(commits):,} ({len(commits) / trainer.seconds:,.0f}/s)",
        (f"{statistics.fmean(sizes):.2f} / {_q(sizes, 0.5):.0f} / {_q(sizes, 0.99):.0f} / "
         f"{max(sizes)}" if sizes else "–"),
        (f"{per_client[0]:,} / {statistics.median(per_client):,.0f} / {per_client[-1]:,} "
         f"of {expected:,}"),
        f"{complete} of {len(results)}", str(resyncs), str(closed),
    ]]
    return table(["trainer events", "start late ms p50 / p99 / max", "log() µs p50 / max",
                  "updates committed", "events per update mean / p50 / p99 / max",
                  ("messages per client min / median / max (of the commits; the hub merges "
                   "the commits of one read)"), "clients with a message per commit",
                  "resyncs", "closed early"], body)


def cpu_table(rows: list[Cpu], seconds: float) -> str:
    body = [[r.name, r.where, f"{r.seconds:.2f}", f"{r.seconds / seconds * 100:.0f}%",
             f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "–"] for r in rows]
    return table(["process", "what runs there", "CPU s", "% of one core", "peak RSS MB"],
                 body, align=["l", "l", "r", "r", "r"])


# --- Orchestration ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f}s of logging")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"seconds of logging (default {SECONDS:.0f}; "
                             f"{QUICK_SECONDS:.0f} with --quick)")
    parser.add_argument("--rate", type=float, default=RATE, help="events per second")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="WebSocket clients")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="processes the clients are spread over")
    parser.add_argument("--block", type=float, default=None,
                        help="passed to the worker as --block (default: the worker's own)")
    parser.add_argument("--no-deflate", action="store_true",
                        help="clients do not offer permessage-deflate (browsers do)")
    args = parser.parse_args(argv)

    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    steps = int(seconds * args.rate)
    url = redis_url()
    client = redis.Redis.from_url(url)
    prefix = unique_prefix("lat")
    keys = Keys(prefix)
    job_id = f"latency-{secrets.token_hex(3)}"
    log_dir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    ctx = multiprocessing.get_context("spawn")
    processes: list[tuple[str, Popen[bytes] | BaseProcess]] = []
    proc: Popen[bytes] | BaseProcess
    try:
        worker_args = ["--redis-url", url, "--prefix", prefix,
                       "--updates-keep", str(max(10_000, 2 * steps))]
        if args.block is not None:
            worker_args += ["--block", str(args.block)]
        worker = start_monitor("worker", worker_args, log_dir / "worker.log")
        processes.append(("worker", worker))
        port = free_port()
        gateway = start_monitor("gateway", ["--redis-url", url, "--prefix", prefix,
                                            "--host", "127.0.0.1", "--port", str(port),
                                            "--log-level", "warning"],
                                log_dir / "gateway.log")
        processes.append(("gateway", gateway))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)

        trainer_conn, child_conn = ctx.Pipe()
        trainer = ctx.Process(target=trainer_process, name="trainer",
                              args=(url, prefix, job_id, steps, args.rate, child_conn))
        trainer.start()
        processes.append(("trainer", trainer))
        receive(trainer_conn, "the trainer", ANSWER_TIMEOUT)
        _wait_committed(client, keys, job_id, worker)  # step 0: in every client's snapshot

        spec_clients = split_evenly(args.clients, args.client_procs)
        client_conns: list[Connection] = []
        for i, n in enumerate(spec_clients):
            spec = ClientSpec(url=f"ws://127.0.0.1:{port}/ws", clients=n, job_id=job_id,
                              tag="loss", record=True, deflate=not args.no_deflate)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(spec, child), name=f"clients-{i}")
            proc.start()
            processes.append((f"clients-{i}", proc))
            client_conns.append(parent)
        client_cpu0 = []
        for conn in client_conns:
            _, _, errors, cpu = receive(conn, "a client process", ANSWER_TIMEOUT)
            client_cpu0.append(cpu)
            if errors:
                print(f"warning: client errors: {errors}", file=sys.stderr)
        assert trainer.pid is not None
        watched = {"trainer": trainer.pid, "worker": worker.pid, "gateway": gateway.pid}
        cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
        redis_cpu0 = redis_cpu_seconds(client)
        added0 = entries_added(client, keys.updates)
        last0: Any = client.xrevrange(keys.updates, count=1)
        after = last0[0][0].decode() if last0 else "0-0"

        quiet = wait_for_quiet()
        machine0, parent_cpu0 = machine_cpu(), time.process_time()
        wall0 = time.perf_counter()
        trainer_conn.send("go")
        report: TrainerReport = receive(trainer_conn, "the trainer", seconds * 3 + 60)
        for conn in client_conns:
            conn.send(("finish", loss_of(steps), FINISH_TIMEOUT))
        results: list[ClientResult] = []
        client_cpu = []
        for conn, start_cpu in zip(client_conns, client_cpu0):
            _, part, cpu = receive(conn, "a client process", FINISH_TIMEOUT + 60)
            results += part
            client_cpu.append(cpu - start_cpu)
        wall = time.perf_counter() - wall0
        machine1 = machine_cpu()
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
        rss = {name: peak_rss_mb(pid) for name, pid in watched.items()}
        redis_cpu = redis_cpu_seconds(client) - redis_cpu0
        expected = entries_added(client, keys.updates) - added0
        commits = committed_updates(client, keys.updates, after, job_id)
        trainer_conn.send("close")

        lat = latencies(report.returned, commits, results)
        cpus = [
            Cpu("trainer", "run.log() loop + the SDK's sender thread", cpu["trainer"],
                rss["trainer"]),
            Cpu("worker", "`monitor worker` (asyncio)", cpu["worker"], rss["worker"]),
            Cpu("gateway", "`monitor gateway` (uvicorn, asyncio, websockets)", cpu["gateway"],
                rss["gateway"]),
            *(Cpu(f"clients {i + 1}", f"{n} WebSocket clients, one asyncio loop", c, None)
              for i, (n, c) in enumerate(zip(spec_clients, client_cpu))),
            Cpu("Redis", "the whole server (shared; others' load included)", redis_cpu, None),
        ]
        ours = sum(c.seconds for c in cpus) + time.process_time() - parent_cpu0
        machine = f"{quiet}; then {machine_busy_line(machine0, machine1, wall, ours)}"
        print_report(client, args, seconds, steps, report, commits, expected, results, lat,
                     cpus, wall, machine, log_dir)
        return 0
    finally:
        for name, proc in reversed(processes):
            stop_process(proc, name)
        delete_prefix(client, prefix)
        client.close()


def print_report(client: redis.Redis, args: argparse.Namespace, seconds: float, steps: int,
                 report: TrainerReport, commits: list[tuple[int, int]], expected: int,
                 results: list[ClientResult], lat: Latencies, cpus: list[Cpu], wall: float,
                 machine: str, log_dir: Path) -> None:
    block = f"--block {args.block}" if args.block is not None else "default --block (0.5 s)"
    print("## End-to-end latency: run.log() → WebSocket clients\n")
    print(machine_line(client) + "\n")
    print(f"One trainer logs {args.rate:,.0f} events/s for {seconds:.0f}s through the SDK "
          f"(every {EVAL_EVERY}th with eval_loss, a new best each time); `monitor worker` "
          f"({block}, batch size 1000) and `monitor gateway` run as their own processes; "
          f"{args.clients} WebSocket clients "
          f"({'no compression' if args.no_deflate else 'offering permessage-deflate, as browsers do'}) "
          f"in {args.client_procs} separate process(es). Nothing is pinned: the trainer, worker, "
          f"gateway, client process(es) and Redis all share the machine's "
          f"{len(os.sched_getaffinity(0))} usable cores. Latency of an event = a client's "
          f"`time.time()` when the first update carrying it (its step, decoded from the job "
          f"view's `loss`) comes out of `recv()` in the client's loop − the trainer's "
          f"`time.time()` right after its `run.log()` returned. The split at the commit uses "
          f"the `updates` entry id, whose ms are truncated: 'to commit' reads up to 1 ms low "
          f"and 'to a client' up to 1 ms high.\n")
    print(latency_table(lat) + "\n")
    print(delivery_table(report, steps, commits, expected, results) + "\n")
    print(cpu_table(cpus, wall) + "\n")
    p99 = lat.end_to_end.quantile(0.99) * 1e3
    headline(f"log() → update at each of {args.clients} WebSocket clients, {args.rate:,} "
             f"events/s, p50 / p95 / p99 ms",
             " / ".join(f"{lat.end_to_end.quantile(q) * 1e3:.1f}" for q in (0.5, 0.95, 0.99)),
             f"p99 < {BAR_P99_MS:.0f} (goal < {GOAL_P99_MS:.0f})",
             verdict(p99 < BAR_P99_MS, p99 < GOAL_P99_MS))
    print(f"- End-to-end p99 **{p99:.1f} ms**: bar < {BAR_P99_MS:.0f} ms "
          f"{'met' if p99 < BAR_P99_MS else 'NOT met'}; goal < {GOAL_P99_MS:.0f} ms "
          f"{'met' if p99 < GOAL_P99_MS else 'not met'}.")
    quarters = ", ".join(f"{h.quantile(0.5) * 1e3:.1f} / {h.quantile(0.99) * 1e3:.1f}"
                         for h in lat.quarters)
    print(f"- End-to-end p50 / p99 ms by quarter of the run (a backlog grows if these do): "
          f"{quarters}.")
    print(f"- CPU over {wall:.1f}s wall (from the first log() until every client had the last "
          f"step, or gave up after {FINISH_TIMEOUT:.0f}s); {machine}.")
    print(f"- Events dropped by the SDK: {report.dropped}. Updates kept for the count: the "
          f"worker ran with --updates-keep {max(10_000, 2 * steps):,}. Logs: {log_dir}")
    retries = sum(r.retries for r in results)
    if retries:
        print(f"- Connection attempts retried before the first snapshot: {retries}.")
    unfinished = sum(1 for r in results if not r.finished)
    if unfinished:
        print(f"- WARNING: {unfinished} client(s) never saw the last step; closed early: "
              f"{[r.closed for r in results if r.closed][:3]}")


def _wait_committed(client: redis.Redis, keys: Keys, job_id: str, worker: Popen[bytes]) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        raw = client.hget(keys.jobs, job_id)
        if raw is not None and public_state(raw)["loss"] == loss_of(0):
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        time.sleep(0.02)
    raise RuntimeError("the worker did not commit the trainer's first step within 30s")


if __name__ == "__main__":
    sys.exit(main())
