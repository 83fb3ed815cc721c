"""Partitions (docs/scale-out.md), end to end: real ``monitor worker`` and ``monitor gateway``
processes with MONITOR_PARTITIONS=4 on the tests' Redis, and with 4 and 1 on a real Redis
Cluster; events through ``POST /api/events``, the SDK and raw XADDs to ``<prefix>events``;
workers SIGKILLed mid-stream, a cluster master restarted, a failover. The views every gateway
serves and every ``/ws`` client ends with equal a from-scratch fold of what was published."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from websockets.sync.client import connect

from monitor.decoded import parse_event
from monitor.partitions import Partitioning
from monitor.sdk import start_run
from tests.conftest import delete_prefix, free_port
from tests.helpers import env_for, spawn_monitor, stop_process, wait_for
from tests.redis_cluster import LocalCluster, flush
from tests.reference import reference_views

MODELS = ["org/alpha", "org/beta", "org/gamma", "org/delta", "org/epsilon", None]
COMPARED = ("id", "model_name", "model_display", "status", "archived", "best_eval_loss",
            "best_step", "eval_loss", "loss", "is_best", "delta_pct", "tier", "created_at",
            "final_eval_loss", "best_checkpoint_path")


def scenario(rng: random.Random, jobs: int) -> list[tuple[str, dict[str, Any]]]:
    """(path, event) in publishing order: each job's events all through the API or all as raw
    XADDs (the first to name a model decides; a raw XADD names it when the router forwards
    it). A third of the jobs send metrics before job_started, without a model; a fifth
    name another model later; one model is null."""
    per_job = []
    for j in range(jobs):
        job, model = f"job-{j}", MODELS[j % len(MODELS)]
        ts = 1000.0 + j
        events: list[dict[str, Any]] = [{"type": "job_started", "job_id": job,
                                         "model_name": model, "ts": ts}]
        for step in range(1, 7):
            event: dict[str, Any] = {"type": "metrics", "job_id": job, "step": step,
                                     "loss": round(rng.uniform(0.1, 2), 3), "ts": ts + step}
            if step % 2 == 0:
                event["eval_loss"] = round(rng.uniform(0.2, 1.5), 3)
            events.append(event)
        events.append({"type": "checkpoint", "job_id": job, "path": f"ckpt-{job}", "step": 4,
                       "ts": ts + 4.5})
        if j % 3 == 0:  # metrics first, with no model named
            events = events[1:3] + events[:1] + events[3:]
        if j % 5 == 0:  # a later event names another model: ignored
            events.append({"type": "metrics", "job_id": job, "model_name": "org/other",
                           "step": 9, "loss": 0.5, "ts": ts + 9})
        if j % 2 == 0:
            events.append({"type": "job_finished", "job_id": job, "status": "completed",
                           "ts": ts + 10})
        path = "xadd" if j % 4 == 0 else "api"
        per_job.append([(path, e) for e in events])
    out = []
    while any(per_job):
        out.append(rng.choice([e for e in per_job if e]).pop(0))
    return out


def expected_views(published: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    stream = []
    for i, (_, event) in enumerate(published):
        parsed = parse_event(orjson.dumps(event))
        stream.append(((1, i), parsed.ts, parsed))
    return reference_views(stream)


def post(port: int, events: list[dict[str, Any]]) -> None:
    """``POST /api/events``, again while the gateway answers 5xx (Redis restarting)."""
    def once() -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/events",
                                         data=orjson.dumps(events), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
    retrying(once)


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def compared(views: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {job_id: {k: view.get(k) for k in COMPARED} for job_id, view in views.items()}


class Client(threading.Thread):
    """A /ws client that keeps the jobs as the messages leave them, and the last version."""

    def __init__(self, port: int, since: str | None = None, until: float = 60) -> None:
        super().__init__(daemon=True)
        self.url = f"ws://127.0.0.1:{port}/ws" + (f"?since={since}" if since else "")
        self.jobs: dict[str, dict[str, Any]] = {}
        self.version: str | None = None
        self.kinds: list[str] = []
        self.closing = threading.Event()
        self.until = until

    def run(self) -> None:
        deadline = time.monotonic() + self.until
        with connect(self.url, open_timeout=5, max_size=None) as ws:
            while not self.closing.is_set() and time.monotonic() < deadline:
                try:
                    message = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                self.kinds.append(message["type"])
                if message["type"] == "snapshot":
                    self.jobs = {}
                for job in message["jobs"]:
                    old = self.jobs.get(job["id"])
                    if old is not None and old["model_name"] is not None \
                            and job["model_name"] is None:
                        continue  # an older view from the partition it left (as the page)
                    self.jobs[job["id"]] = job
                self.version = message["version"]

    def stop(self) -> None:
        self.closing.set()
        self.join(10)


class Deployment:
    """Workers and gateways of one deployment on a fresh prefix, as child processes."""

    def __init__(self, redis_url: str, cluster: bool, partitions: int, logs: Path,
                 workers: int = 2, gateways: int = 2) -> None:
        self.prefix = f"parts{time.monotonic_ns()}:"
        self.cluster = cluster
        self.part = Partitioning(self.prefix, partitions, cluster)
        self.client: Any = (RedisCluster.from_url(redis_url) if cluster
                            else redis.Redis.from_url(redis_url))
        self.env = {**env_for(redis_url, self.prefix), "MONITOR_PARTITIONS": str(partitions),
                    "MONITOR_REDIS_CLUSTER": str(cluster).lower()}
        self.logs = logs
        self.workers = [self._worker(f"worker{i}") for i in range(workers)]
        self.ports = [free_port() for _ in range(gateways)]
        self.gateways = [spawn_monitor(self.env, logs / f"gateway{i}.log", "gateway",
                                       "--port", str(port))
                         for i, port in enumerate(self.ports)]
        for port in self.ports:
            wait_for(lambda port=port: _answers(port), 20, f"gateway on {port}")

    def _worker(self, name: str) -> Any:
        return spawn_monitor(self.env, self.logs / f"{name}.log", "worker", "--lease-ttl", "1",
                             "--block", "0.1", "--batch-size", "50")

    def kill_a_worker(self) -> None:
        """SIGKILL the oldest worker and start another."""
        victim = self.workers.pop(0)
        victim.kill()
        victim.wait(10)
        self.workers.append(self._worker("again"))

    def publish(self, published: list[tuple[str, dict[str, Any]]], rng: random.Random,
                during: dict[int, Callable[[], None]] | None = None) -> None:
        """Send each event its way (API batches to the first gateway, raw XADDs), calling
        ``during[i]`` after event i."""
        batch: list[dict[str, Any]] = []
        for i, (path, event) in enumerate(published):
            if path == "xadd":
                if batch:
                    post(self.ports[0], batch)
                    batch = []
                retrying(lambda event=event: self.client.xadd(
                    self.part.ingress, {"data": orjson.dumps(event)}))
            else:
                batch.append(event)
                if len(batch) >= rng.randint(1, 12):
                    post(self.ports[0], batch)
                    batch = []
            if during and i in during:
                during[i]()
        if batch:
            post(self.ports[0], batch)

    def views(self, port: int) -> dict[str, dict[str, Any]]:
        jobs = get(port, "/api/jobs?include_archived=true")["jobs"]
        return compared({v["id"]: v for v in jobs})

    def settle(self, want: dict[str, dict[str, Any]], port: int, timeout: float = 40) -> None:
        try:
            wait_for(lambda: self.views(port) == want, timeout,
                     f"the views of the gateway on {port} to equal the fold")
        except AssertionError:
            got = self.views(port)
            wrong = {k: (want.get(k), got.get(k)) for k in set(want) | set(got)
                     if want.get(k) != got.get(k)}
            raise AssertionError(f"{len(wrong)} jobs differ, e.g. {list(wrong.items())[:2]}") \
                from None

    def applied(self) -> int:
        return sum(int(self.client.hget(keys.stats, "applied") or 0)
                   for keys in self.part.all_keys())

    def close(self) -> None:
        for proc in [*self.workers, *self.gateways]:
            stop_process(proc)
        if not self.cluster:
            delete_prefix(self.client, self.prefix)
        self.client.close()


def retrying(call: Callable[[], Any], timeout: float = 30) -> Any:
    """``call`` until it works (Redis or the gateway may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (OSError, RedisError, RedisClusterException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(params=[("redis", 4), ("cluster", 4), ("cluster", 1)],
                ids=["redis-4", "cluster-4", "cluster-1"])
def deployment(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
               ) -> Iterator[Deployment]:
    """Two workers and two gateways: 4 partitions on the tests' Redis, or 4 or 1 on a real
    3-master Redis Cluster (shared by the tests)."""
    backend, partitions = request.param
    if backend == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        flush(cluster)
        redis_url = cluster.url
    running = Deployment(redis_url, backend == "cluster", partitions, tmp_path)
    yield running
    running.close()


def _answers(port: int) -> bool:
    try:
        return bool(get(port, "/healthz"))
    except OSError:
        return False


def test_partitions_two_workers_two_gateways_equal_a_fold(deployment: Deployment) -> None:
    rng = random.Random(16)
    published = scenario(rng, 36)
    port_a, port_b = deployment.ports
    live = Client(port_b)
    live.start()
    early = Client(port_a)
    early.start()
    wait_for(lambda: early.version is not None, 10, "a first /ws message")
    early.stop()
    resume_from = early.version
    assert resume_from is not None and resume_from.count(".") == deployment.part.count - 1

    n = len(published)
    kills = {n // 4: deployment.kill_a_worker, n // 2: deployment.kill_a_worker,
             3 * n // 4: deployment.kill_a_worker}
    deployment.publish(published, rng, kills)

    want = compared(expected_views(published))
    deployment.settle(want, port_b)
    assert deployment.views(port_a) == want

    wait_for(lambda: compared(live.jobs) == want, 10, "the live /ws client to catch up")
    live.stop()
    assert live.kinds[0] == "snapshot"

    resumed = Client(port_a, since=resume_from)
    resumed.start()
    try:
        wait_for(lambda: compared(resumed.jobs) == want, 15, "a resumed /ws client to catch up")
    finally:
        resumed.stop()
    assert "snapshot" not in resumed.kinds  # every update was still kept: nothing replayed whole

    assert deployment.applied() == len(published)  # nothing doubled, nothing lost
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port_b}/metrics").read().decode()
    per_partition = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("monitor_partition_events_applied_total{")]
    assert len(per_partition) == deployment.part.count
    assert sum(per_partition) == len(published)
    assert f"monitor_events_applied_total {float(len(published))}" in metrics
    assert "monitor_partition_commit_seconds_bucket{" in metrics
    part = deployment.part
    for job_id, view in want.items():  # every job lives in the partition of its model
        assert deployment.client.hexists(part.keys(part.of_model(view["model_name"])).jobs,
                                         job_id), job_id


def replicated(masters: list[tuple[str, int]], timeout: float = 10) -> None:
    """Wait until every master's replica has every write the master has."""
    for host, port in masters:
        node = redis.Redis(host=host, port=port)

        def caught_up(node: redis.Redis = node) -> bool:
            info = node.info("replication")
            offset = int(info["master_repl_offset"])
            return all(int(info[f"slave{i}"]["offset"]) >= offset
                       for i in range(int(info["connected_slaves"])))
        wait_for(caught_up, timeout, f"the replica of {host}:{port} to catch up")
        node.close()


def with_ids(published: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Every event with an event_id, so that a publish retried after a fault is harmless."""
    return [(path, {**event, "event_id": f"e{i}"}) for i, (path, event) in enumerate(published)]


def publish_through_faults(cluster: LocalCluster, tmp_path: Path, seed: int,
                           faults: Callable[[int], dict[int, Callable[[], None]]]) -> None:
    """A 4-partition deployment on ``cluster`` (2 workers, 1 gateway) is sent a scenario
    with event ids, ``faults(n)`` happening after the events they are keyed by; it ends
    equal to a fold, every event applied once."""
    deployment = Deployment(cluster.url, True, 4, tmp_path, gateways=1)
    try:
        rng = random.Random(seed)
        published = with_ids(scenario(rng, 24))
        deployment.publish(published, rng, faults(len(published)))
        deployment.settle(compared(expected_views(published)), deployment.ports[0],
                          timeout=60)
        assert deployment.applied() == len(published)
    finally:
        deployment.close()


def test_a_cluster_master_restarted_mid_stream_loses_nothing(
        redis_cluster_factory: Callable[..., LocalCluster], tmp_path: Path) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=0, appendonly=True)
    publish_through_faults(cluster, tmp_path, 17, lambda n: {
        n // 3: lambda: cluster.restart_node(1), 2 * n // 3: lambda: cluster.restart_node(2)})


def test_a_failover_mid_stream_loses_nothing_the_replica_had(
        redis_cluster_factory: Callable[..., LocalCluster], tmp_path: Path) -> None:
    """Redis replicates asynchronously: a failover loses what the replica had not received.
    The crash comes once the replicas have what was published so far, as for a publisher
    that waits for that (WAIT); the worker's commits need nothing of the kind (a lost commit
    is applied again from the entries it had not acknowledged)."""
    cluster = redis_cluster_factory(masters=3, replicas=1, appendonly=True)

    def crash_a_master() -> None:
        replicated(cluster.nodes[:3])
        cluster.failover(0)

    publish_through_faults(cluster, tmp_path, 18, lambda n: {n // 2: crash_a_master})


def test_sdk_runs_reach_the_partition_of_their_model_and_hear_a_stop(
        deployment: Deployment) -> None:
    """Runs of the SDK, one per model (and one without), land where their model lives; a
    stop asked on a gateway reaches the trainer through its partition's stop requests."""
    port = deployment.ports[1]
    url = deployment.env["MONITOR_REDIS_URL"]
    runs = {}
    for i, model in enumerate(MODELS):
        run = start_run(model, job_id=f"sdk-{i}", redis_url=url, prefix=deployment.prefix,
                        cluster=deployment.cluster, total_epochs=2)
        for step in range(1, 5):
            run.log(step=step, loss=1.0 / step, eval_loss=2.0 / step + i / 100)
        runs[run.job_id] = (run, model)
    for job_id, (run, _) in list(runs.items())[1:]:
        run.finish()
        run.close()
    listening, _ = runs["sdk-0"]
    wait_for(lambda: len(deployment.views(port)) == len(MODELS), 20, "the SDK's runs")
    views = deployment.views(port)
    for job_id, (_, model) in runs.items():
        view = views[job_id]
        assert view["model_name"] == model
        assert view["best_step"] == 4 and view["best_eval_loss"] == pytest.approx(
            0.5 + int(job_id.split("-")[1]) / 100)
        part = deployment.part
        assert deployment.client.hexists(part.keys(part.of_model(model)).jobs, job_id)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/sdk-0/stop",
                                     data=b'{"reason": "partitions"}', method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
    wait_for(lambda: listening.should_stop, 15, "the trainer to hear the stop")
    assert listening.stop_request is not None
    assert listening.stop_request["reason"] == "partitions"
    listening.__exit__(None, None, None)  # leaving its with block: it ends stopped
    wait_for(lambda: deployment.views(port)["sdk-0"]["status"] == "stopped", 15,
             "the run to end stopped")
