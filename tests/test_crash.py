"""Crash safety on a real Redis: kill -9 the worker at random moments, lose and repeat nothing."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from monitor import history
from monitor.decoded import Metrics, parse_event
from monitor.events import BadEvent
from monitor.keys import Keys, model_field
from monitor.records import public_state
from monitor.rules import parse_pos
from tests.helpers import env_for, read_not_committed, spawn_monitor, stop_process
from tests.reference import reference_models, reference_views

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODELS = ["Qwen/Qwen2.5-7B-Instruct", "/data/huggingface_models/Qwen-Qwen3-1.7B/snapshots/a1",
          "meta-llama/Llama-3.2-3B", None]
VIEW_ONLY = ("is_best", "delta_pct", "tier", "gpu_hours")  # derived, not stored


def spawn_worker(redis_url: str, keys: Keys, log: Path) -> subprocess.Popen[bytes]:
    """``monitor worker`` as a child process, with no MONITOR_* setting inherited."""
    return spawn_monitor(env_for(redis_url, keys.prefix), log, "worker", "--lease-ttl", "1",
                         "--batch-size", "200", "--block", "0.1")


def training_traffic(rng: random.Random, total: int) -> list[bytes]:
    """Interleaved events of 12 jobs (two of them long enough to be downsampled), with
    re-sent duplicates and a few malformed entries."""
    jobs = [f"job-{i}" for i in range(12)]
    weights = [8, 8] + [1] * 10
    steps = dict.fromkeys(jobs, 0)
    out: list[bytes] = []
    sent_with_id: list[bytes] = []
    for job, model in zip(jobs, MODELS * 3):
        out.append(orjson.dumps({"type": "job_started", "job_id": job, "model_name": model,
                                 "total_epochs": 3, "ts": 1000.0}))
    while len(out) < total - 20:
        roll = rng.random()
        job = rng.choices(jobs, weights)[0]
        if roll < 0.005:
            out.append(rng.choice([b"{not json", b'{"type":"metrics","job_id":"x","loss":NaN}',
                                   orjson.dumps({"type": "metrics", "job_id": job})]))
            continue
        if roll < 0.02 and sent_with_id:
            out.append(rng.choice(sent_with_id))  # an SDK retry: same event_id again
            continue
        steps[job] += 1
        step = steps[job]
        event: dict[str, Any] = {"type": "metrics", "job_id": job, "step": step,
                                 "epoch": step / 500, "loss": round(rng.uniform(0.1, 2), 4),
                                 "ts": 1000.0 + step}
        if roll < 0.1:
            event["eval_loss"] = round(rng.uniform(0.2, 1.5), 4)
        elif roll < 0.11:
            event = {"type": "checkpoint", "job_id": job, "path": f"checkpoint-{step}",
                     "step": step, "epoch": step / 500, "ts": 1000.0 + step}
        elif roll < 0.112:
            event = {"type": rng.choice(["job_archived", "job_restored"]), "job_id": job}
        if rng.random() < 0.3:  # half of the form the SDK sends, half of any other
            event["event_id"] = f"sdk{job}:{step}" if rng.random() < 0.5 else f"{job}-{step}"
            sent_with_id.append(orjson.dumps(event))
        out.append(orjson.dumps(event))
    for job in jobs[2:]:
        out.append(orjson.dumps({"type": "job_finished", "job_id": job,
                                 "status": rng.choice(["completed", "failed"])}))
    return out


def expected_state(published: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The from-scratch fold of everything published."""
    stream, dead = [], []
    for entry_id, raw in published:
        pos = parse_pos(entry_id)
        try:
            event = parse_event(raw)
        except BadEvent:
            dead.append(entry_id)
            continue
        stream.append((pos, event.ts if event.ts is not None else pos[0] / 1000, event))
    views = reference_views(stream)
    points: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    applied = 0
    for _, ts, event in stream:
        if event.event_id is not None:
            if (event.job_id, event.event_id) in seen:
                continue
            seen.add((event.job_id, event.event_id))
        applied += 1
        if isinstance(event, Metrics):
            points.setdefault(event.job_id, []).append(
                {"step": event.step, "epoch": event.epoch, "loss": event.loss,
                 "eval_loss": event.eval_loss, "ts": ts})
    return {
        "views": views,
        "models": reference_models(views),
        "points": {job: history.extend([], p) for job, p in points.items()},
        "logged": {job: len(p) for job, p in points.items()},
        "dead": dead,
        "stats": {"applied": applied, "duplicates": len(stream) - applied, "dead": len(dead)},
    }


def wait_applied(r: redis.Redis, keys: Keys, target: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = r.get(keys.applied)
        if applied is not None and applied.decode() == target:
            return
        time.sleep(0.05)
    raise AssertionError(f"not applied up to {target} within {timeout}s")


def test_sigkill_at_random_moments_loses_and_repeats_nothing(
        redis_url: str, keys: Keys, r: redis.Redis, tmp_path: Path) -> None:
    rng = random.Random(20261126)
    traffic = training_traffic(rng, 20_000)
    published: list[tuple[str, bytes]] = []

    def publish() -> None:
        client = redis.Redis.from_url(redis_url)
        for i in range(0, len(traffic), 100):
            chunk = traffic[i : i + 100]
            with client.pipeline(transaction=False) as pipe:
                for raw in chunk:
                    pipe.xadd(keys.events, {"data": raw})
                ids = pipe.execute()
            published.extend((entry_id.decode(), raw) for entry_id, raw in zip(ids, chunk))
            time.sleep(0.04)
        client.close()

    log = tmp_path / "worker.log"
    publisher = threading.Thread(target=publish)
    worker = spawn_worker(redis_url, keys, log)
    publisher.start()
    kills = 0
    killer = random.Random()  # the moments really are random
    try:
        while publisher.is_alive() or kills < 5:
            time.sleep(killer.uniform(0.3, 1.3))
            worker.kill()  # SIGKILL: no clean-up of any kind
            worker.wait(10)
            kills += 1
            worker = spawn_worker(redis_url, keys, log)
        publisher.join()
        wait_applied(r, keys, published[-1][0], timeout=120)
    finally:
        stop_process(worker)
        publisher.join()
    assert kills >= 5

    expected = expected_state(published)
    jobs = {k.decode(): public_state(v) for k, v in r.hgetall(keys.jobs).items()}
    assert jobs == {j: {k: v for k, v in view.items() if k not in VIEW_ONLY}
                    for j, view in expected["views"].items()}
    models = {k.decode(): orjson.loads(v) for k, v in r.hgetall(keys.models).items()}
    assert models == {model_field(m): row for m, row in expected["models"].items()}
    for job, points in expected["points"].items():
        stored = [orjson.loads(p) for p in r.lrange(keys.metrics(job), 0, -1)]
        assert stored == points, job
    assert expected["logged"]["job-0"] > history.LIMIT > len(expected["points"]["job-0"])

    # Nothing applied twice, nothing refused twice, everything read is committed.
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.stats).items()}
    assert {k: stats.get(k, 0) for k in expected["stats"]} == expected["stats"]
    assert [f[b"id"].decode() for _, f in r.xrange(keys.dead)] == expected["dead"]
    group = r.xinfo_groups(keys.events)[0]
    assert group["last-delivered-id"].decode() == published[-1][0]
    assert read_not_committed(r, keys) == 0

    # The updates stream carries every change: its latest view of each job is the final one.
    latest: dict[str, dict[str, Any]] = {}
    for _, fields in r.xrange(keys.updates):
        latest.update({v["id"]: v for v in orjson.loads(fields[b"data"])["jobs"]})
    assert latest == expected["views"]


def test_a_standby_takes_over_when_the_active_worker_is_killed(
        redis_url: str, keys: Keys, r: redis.Redis, tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    workers = [spawn_worker(redis_url, keys, log) for _ in range(2)]
    try:
        r.xadd(keys.events, {"data": orjson.dumps({"type": "metrics", "job_id": "a",
                                                   "loss": 1.0})})
        deadline = time.monotonic() + 30
        while r.hget(keys.jobs, "a") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = r.get(keys.lease).decode()
        active = next(w for w in workers if f"-{w.pid}-" in holder)
        standby = next(w for w in workers if w is not active)
        active.kill()
        active.wait(10)
        killed_at = time.monotonic()
        r.xadd(keys.events, {"data": orjson.dumps({"type": "metrics", "job_id": "a",
                                                   "loss": 0.5})})
        while time.monotonic() < killed_at + 30:
            if public_state(r.hget(keys.jobs, "a"))["loss"] == 0.5:
                break
            time.sleep(0.05)
        took = time.monotonic() - killed_at
        assert public_state(r.hget(keys.jobs, "a"))["loss"] == 0.5
        assert f"-{standby.pid}-" in r.get(keys.lease).decode()
        print(f"standby applied new events {took:.2f}s after the active worker was killed")
    finally:
        for w in workers:
            stop_process(w)
