"""Pages of ``GET /api/jobs`` and ``/ws?windows=1`` windows, checked against the whole list
(docs/rest.md, Pages of jobs; docs/websocket.md, Windows): no job missing, doubled or stale
after paging, filtering and live updates."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from monitor.keys import Keys
from monitor.partitions import Partitioning
from monitor.rules import JobState, job_view, parse_pos
from monitor.settings import GatewaySettings
from tests.conftest import delete_prefix
from tests.gateway_helpers import RunningWorker, make_client, publish
from tests.helpers import env_for, spawn_monitor, stop_process, wait_for
from tests.redis_cluster import flush
from web.gateway import Gateway
from web.hub import RESYNC, ROUTED, Reply, Shared, Subscriber, update_message
from web.state import list_key
from web.watching import Changes, Watching
from web.windows import Filters
from web.ws_windows import WindowedClient

pytestmark = pytest.mark.timeout(120)

MODELS = ["org/alpha-7b", "org/beta-1b", "gamma", None]
STATUSES = ["completed", "failed", "stopped"]


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    with make_client(redis_url, keys) as c:
        yield c


def scenario(rng: random.Random, jobs: int, start: int = 0) -> list[dict[str, Any]]:
    """Jobs over the models (one in four never names one), some with a name, finished or
    not, some archived; created_at ties on purpose (several jobs share a ts)."""
    events: list[dict[str, Any]] = []
    for n in range(start, start + jobs):
        job = f"job-{n:04d}"
        model = rng.choice(MODELS)
        ts = 1_000 + (n // 3)  # three jobs per second: ties by id
        started: dict[str, Any] = {"type": "job_started", "job_id": job, "ts": ts}
        if model is not None:
            started["model_name"] = model
        if rng.random() < 0.5:
            started["name"] = rng.choice(["lr-sweep", "Baseline", "seed run", "LR warm"])
        events.append(started)
        events.append({"type": "metrics", "job_id": job, "ts": ts + 1, "step": 1,
                       "eval_loss": round(rng.uniform(0.2, 1.0), 4)})
        if rng.random() < 0.6:
            events.append({"type": "job_finished", "job_id": job, "ts": ts + 2,
                           "status": rng.choice(STATUSES)})
        if rng.random() < 0.15:
            events.append({"type": "job_archived", "job_id": job, "ts": ts + 3})
    return events


def everything(client: TestClient) -> list[dict[str, Any]]:
    body = client.get("/api/jobs", params={"include_archived": "true"}).json()
    return list(body["jobs"])


def expected(views: list[dict[str, Any]], filters: Filters) -> list[str]:
    return [v["id"] for v in views if filters.matches(v)]


def pages(client: TestClient, limit: int, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every page of a filtered list; the views in order, and how many requests it took."""
    views: list[dict[str, Any]] = []
    cursor = None
    asked = 0
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/jobs", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        asked += 1
        assert len(body["jobs"]) <= limit
        views.extend(body["jobs"])
        cursor = body["next"]
        if cursor is None:
            return views, asked
        assert asked < 500


FILTER_CASES: list[tuple[dict[str, Any], Filters]] = [
    ({}, Filters.of()),
    ({"include_archived": "true"}, Filters.of(True)),
    ({"model": "org/alpha-7b"}, Filters.of(model="org/alpha-7b")),
    ({"unnamed": "true", "include_archived": "true"}, Filters.of(True, None)),
    ({"status": "running"}, Filters.of(status="running")),
    ({"q": "SWEEP"}, Filters.of(q="sweep")),
    ({"q": "beta", "include_archived": "true"}, Filters.of(True, q="beta")),
    ({"q": "job-01", "status": "failed"}, Filters.of(q="job-01", status="failed")),
    ({"q": "nothing matches this"}, Filters.of(q="nothing matches this")),
]


@pytest.mark.parametrize(("params", "filters"), FILTER_CASES,
                         ids=[str(p) or "all" for p, _ in FILTER_CASES])
def test_pages_list_every_job_once_in_order(client: TestClient, r: redis.Redis, keys: Keys,
                                            worker: RunningWorker, params: dict[str, Any],
                                            filters: Filters) -> None:
    publish(r, keys, scenario(random.Random(7), 240))
    worker.wait_applied()
    whole = everything(client)
    assert len(whole) == 240
    views, _ = pages(client, 7, **params)
    assert [v["id"] for v in views] == expected(whole, filters)
    by_id = {v["id"]: v for v in whole}
    assert all(v == by_id[v["id"]] for v in views)  # the same views as the whole list


def test_a_page_says_how_many_jobs_when_a_set_knows(client: TestClient, r: redis.Redis,
                                                    keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, scenario(random.Random(3), 60))
    worker.wait_applied()
    whole = everything(client)
    body = client.get("/api/jobs", params={"limit": 5, "model": "gamma"}).json()
    assert body["total"] == len(expected(whole, Filters.of(model="gamma")))
    assert client.get("/api/jobs", params={"limit": 5, "q": "a"}).json()["total"] is None


def test_past_the_bound_the_whole_list_is_refused_with_413(redis_url: str, r: redis.Redis,
                                                           keys: Keys,
                                                           worker: RunningWorker) -> None:
    publish(r, keys, scenario(random.Random(1), 30))
    worker.wait_applied()
    with make_client(redis_url, keys, api_jobs_max=20) as client:
        refused = client.get("/api/jobs")
        assert refused.status_code == 413
        live = len(expected(everything_paged(client), Filters.of()))
        assert refused.json()["detail"] == (
            f"{live} jobs are more than one answer holds (MONITOR_API_JOBS_MAX=20): ask for "
            "pages with ?limit= and ?cursor= (docs/rest.md)")
        assert client.get("/api/jobs", params={"limit": 10}).status_code == 200
        # a filter is answered whole when the jobs it reads are within the bound: a model's
        # are, a search of every job is not (it would read them all)
        whole = everything_paged(client)
        gamma = client.get("/api/jobs", params={"model": "gamma"})
        assert gamma.status_code == 200
        assert [v["id"] for v in gamma.json()["jobs"]] == expected(whole,
                                                                   Filters.of(model="gamma"))
        assert client.get("/api/jobs", params={"q": "job-0001"}).status_code == 413
    with make_client(redis_url, keys, api_jobs_max=100) as client:
        assert client.get("/api/jobs").status_code == 200


def everything_paged(client: TestClient) -> list[dict[str, Any]]:
    return pages(client, 1000, include_archived="true")[0]


def test_bad_cursors_and_filters_are_422(client: TestClient, r: redis.Redis, keys: Keys,
                                         worker: RunningWorker) -> None:
    publish(r, keys, scenario(random.Random(2), 12))
    worker.wait_applied()
    first = client.get("/api/jobs", params={"limit": 3}).json()
    assert first["next"] is not None
    other = client.get("/api/jobs", params={"limit": 3, "cursor": first["next"],
                                            "include_archived": "true"})
    assert other.status_code == 422
    assert "for these filters" in other.json()["detail"]
    assert client.get("/api/jobs", params={"cursor": "nonsense"}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 1001}).status_code == 422
    assert client.get("/api/jobs", params={"status": "sleeping"}).status_code == 422
    both = client.get("/api/jobs", params={"model": "gamma", "unnamed": "true"})
    assert both.status_code == 422 and both.json()["detail"] == \
        "give model or unnamed=true, not both"
    # cursor alone: pages of 100
    rest = client.get("/api/jobs", params={"cursor": first["next"]}).json()
    assert [v["id"] for v in rest["jobs"]] == [
        v["id"] for v in client.get("/api/jobs").json()["jobs"]][3:]


# --- /ws?windows=1 ---------------------------------------------------------------------------


class WindowedPage:
    """A client of ``/ws?windows=1`` that keeps what it was sent the way docs/websocket.md
    says a client does, so the test can compare it with the whole list."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        summary = ws.receive_json()
        assert summary["type"] == "summary"
        self.summary = summary
        self.models = {self.model_key(row): row for row in summary["models"]}
        self.views: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, tuple[Filters, list[str], Any, str | None]] = {}

    @staticmethod
    def model_key(row: dict[str, Any]) -> str:
        return repr(row["model_name"])

    def ask(self, window_id: str, limit: int, filters: dict[str, Any],
            cursor: str | None = None) -> dict[str, Any]:
        self.ws.send_json({"type": "window", "id": window_id, "limit": limit,
                           "cursor": cursor, **filters})
        reply = self.receive_until("window")
        parsed = Filters.of(filters.get("archived", False),
                            filters["model"] if "model" in filters else Filters().model,
                            filters.get("status"), filters.get("q"))
        old = self.windows.get(window_id)
        ids = (old[1] if old and cursor else []) + [v["id"] for v in reply["jobs"]]
        self.windows[window_id] = (parsed, ids, reply["end"], reply["next"])
        self.take(reply["jobs"], window_id)
        return reply

    def watch(self, ids: list[str]) -> dict[str, Any]:
        self.ws.send_json({"type": "watch", "ids": ids})
        reply = self.receive_until("jobs")
        self.take(reply["jobs"])
        return reply

    def take(self, views: list[dict[str, Any]], taking: str | None = None) -> None:
        """A reply's views: newer than any update before it, they move the other windows
        as an update's do."""
        for view in views:
            self.views[view["id"]] = view
            self.place(view, skip=taking)

    def ask_all(self, window_id: str, limit: int, filters: dict[str, Any]) -> None:
        reply = self.ask(window_id, limit, filters)
        while reply["next"] is not None:
            reply = self.ask(window_id, limit, filters, reply["next"])

    def receive_until(self, kind: str) -> dict[str, Any]:
        while True:
            message = self.ws.receive_json()
            if message["type"] == kind:
                return dict(message)
            assert message["type"] == "update", message
            self.apply(message)

    def place(self, view: dict[str, Any], skip: str | None = None) -> None:
        for window_id, (filters, ids, end, _) in self.windows.items():
            if window_id == skip:
                continue
            inside = filters.matches(view) and (
                end is None or list_key(view) <= (-end["created_at"], end["id"]))
            if view["id"] in ids and not inside:
                ids.remove(view["id"])
            elif inside and view["id"] not in ids:
                ids.append(view["id"])
                ids.sort(key=lambda i: list_key(self.views[i]))

    def apply(self, update: dict[str, Any]) -> None:
        for view in update["jobs"]:
            self.views[view["id"]] = view
            self.place(view)
        for row in update["models"]:
            self.models[self.model_key(row)] = row

    def check(self, whole: list[dict[str, Any]]) -> None:
        """Every window holds exactly the jobs of the whole list it covers, each as the
        server has it now."""
        by_id = {v["id"]: v for v in whole}
        for filters, ids, end, _ in self.windows.values():
            covered = [v["id"] for v in whole if filters.matches(v) and (
                end is None or list_key(v) <= (-end["created_at"], end["id"]))]
            assert ids == covered
            for job_id in ids:
                assert self.views[job_id] == by_id[job_id], job_id


def sync(page: WindowedPage, r: redis.Redis, keys: Keys, worker: RunningWorker,
         marker: str, step: int) -> None:
    """Until every update committed so far has reached the page: a last change of a watched
    job, waited for."""
    publish(r, keys, [{"type": "metrics", "job_id": marker, "step": step, "loss": 1.0}])
    worker.wait_applied()
    while True:
        message = page.ws.receive_json()
        assert message["type"] == "update", message
        page.apply(message)
        if any(v["id"] == marker and v["step"] == step for v in message["jobs"]):
            return


def test_windows_stay_equal_to_the_whole_list_through_live_changes(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    rng = random.Random(11)
    publish(r, keys, [{"type": "job_started", "job_id": "zz-marker", "ts": 1.0}])
    publish(r, keys, scenario(rng, 150))
    worker.wait_applied()
    with client.websocket_connect("ws://127.0.0.1/ws?windows=1") as ws:
        page = WindowedPage(ws)
        whole = everything(client)
        assert page.summary["jobs"] + page.summary["archived"] == len(whole)
        assert sorted(page.models.values(), key=repr) == sorted(
            client.get("/api/models").json(), key=repr)
        jobs = page.watch(["zz-marker", "no-such-job"])
        assert [v["id"] for v in jobs["jobs"]] == ["zz-marker"]
        page.ask("flat", 20, {})
        page.ask("flat", 20, {}, page.windows["flat"][3])  # two pages
        page.ask("alpha", 10, {"model": "org/alpha-7b", "archived": True})
        page.ask_all("unnamed", 50, {"model": None})
        page.ask("sweeps", 5, {"q": "sweep", "status": "running"})
        page.check(whole)
        for round_ in range(4):
            events = scenario(rng, 10, start=1000 + 10 * round_)  # new jobs, newest
            shown = page.windows["flat"][1] + page.windows["alpha"][1]
            for job in rng.sample(shown, 6):
                events.append({"type": "metrics", "job_id": job, "step": 5 + round_,
                               "eval_loss": round(rng.uniform(0.1, 1.0), 4)})
            for job in rng.sample(shown, 2):
                events.append({"type": rng.choice(["job_archived", "job_restored"]),
                               "job_id": job})
            # a new best in a model: every delta of its candidates moves
            events.append({"type": "metrics", "job_id": page.windows["alpha"][1][-1],
                           "step": 99, "eval_loss": 0.01 / (round_ + 1)})
            publish(r, keys, events)
            sync(page, r, keys, worker, "zz-marker", round_ + 1)
            page.check(everything(client))
        models = client.get("/api/models").json()
        assert all(page.models[page.model_key(row)] == row for row in models)


def test_bad_window_messages_are_answered_with_an_error(client: TestClient) -> None:
    with client.websocket_connect("ws://127.0.0.1/ws?windows=1") as ws:
        assert ws.receive_json()["type"] == "summary"
        for message, detail in [
            ("not json", "not JSON"),
            ('{"type": "dance"}', "type must be window, close, watch or unwatch"),
            ('{"type": "window", "id": "a b"}', "id must be 1 to 64 of A-Z a-z 0-9 . _ : -"),
            ('{"type": "window", "id": "w", "limit": 501}',
             "limit must be an integer from 1 to 500"),
            ('{"type": "window", "id": "w", "status": "sleeping"}',
             "status must be one of running, completed, failed, stopped"),
            ('{"type": "window", "id": "w", "cursor": "abc"}',
             "no window 'w' to go on with: start it with cursor null"),
            ('{"type": "watch", "ids": []}', "ids must be a list of 1 to 100 job ids"),
        ]:
            ws.send_text(message)
            error = ws.receive_json()
            assert error["type"] == "error" and error["detail"] == detail, message
        for n in range(16):
            ws.send_json({"type": "window", "id": f"w{n}"})
            assert ws.receive_json()["type"] == "window"
        ws.send_json({"type": "window", "id": "one-too-many"})
        assert ws.receive_json() == {"type": "error", "id": "one-too-many",
                                     "detail": "at most 16 windows"}


def view(job_id: str, created_at: float, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "created_at": created_at, "archived": False, "model_name": None,
            "status": "running", "name": None, "model_display": "Unknown Model", **fields}


def test_an_update_older_than_a_reply_is_not_sent() -> None:
    watching = Watching(1)
    watching.start_over([parse_pos("5-0")])
    shown = [view("b", 2.0), view("a", 1.0)]
    watching.took_page("flat", Filters.of(), True, shown, None,
                       {"a": [parse_pos("9-0")], "b": [parse_pos("9-0")]})
    # an update read before the page (9-0) is older than what the page holds
    assert watching.route(0, parse_pos("8-0"), Changes([view("a", 1.0, step=1)])) == []
    newer = view("a", 1.0, step=2)
    assert watching.route(0, parse_pos("10-0"), Changes([newer])) == [newer]
    # a new job enters a window that reaches the end of the list; one archived leaves it
    fresh, gone = view("c", 3.0), view("b", 2.0, archived=True)
    sent = watching.route(0, parse_pos("11-0"), Changes([fresh, gone]))
    assert sorted(sent, key=lambda v: v["id"]) == [gone, fresh]
    assert watching.windows["flat"].ids == {"a", "c"}
    assert watching.route(0, parse_pos("12-0"), Changes([view("b", 2.0, step=3)])) == [
        view("b", 2.0, step=3)]  # archived, not held, matches again: back in
    assert watching.rows(0, parse_pos("4-0"), [{"model_name": None}]) == []


def test_a_window_short_of_the_end_takes_only_jobs_up_to_its_end() -> None:
    watching = Watching(1)
    watching.start_over([parse_pos("1-0")])
    watching.took_page("flat", Filters.of(), True, [view("b", 5.0)], (-5.0, "b"),
                       {"b": [parse_pos("2-0")]})
    # a job further down is a later page's; a new one above the end enters
    assert watching.route(0, parse_pos("3-0"), Changes([view("old", 1.0)])) == []
    assert watching.route(0, parse_pos("3-0"), Changes([view("new", 9.0)])) == [
        view("new", 9.0)]


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_windows_over_four_partitions_follow_jobs_that_move(
        request: pytest.FixtureRequest, backend: str, redis_url: str, tmp_path: Path) -> None:
    """Four partitions, two worker processes, on Redis and on a real Redis Cluster: jobs
    whose first events name no model live in the unnamed partition until they name one, and
    then move; the windows follow them."""
    cluster = backend == "cluster"
    if cluster:
        local = request.getfixturevalue("redis_cluster")
        flush(local)
        redis_url = local.url
    r: Any = RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    prefix = f"winparts{time.monotonic_ns()}:"
    env = {**env_for(redis_url, prefix), "MONITOR_PARTITIONS": "4",
           "MONITOR_REDIS_CLUSTER": str(cluster).lower()}
    workers = [spawn_monitor(env, tmp_path / f"worker{i}.log", "worker", "--lease-ttl", "1",
                             "--block", "0.05") for i in range(2)]
    part = Partitioning(prefix, 4, cluster)
    rng = random.Random(5)
    published = 0

    def send(events: list[dict[str, Any]]) -> None:
        nonlocal published
        with r.pipeline(transaction=False) as pipe:  # raw XADDs: the ingress router routes
            for event in events:
                pipe.xadd(part.ingress, {"data": orjson.dumps(event)})
            pipe.execute()
        published += len(events)

    def applied() -> int:
        return sum(int(r.hget(k.stats, "applied") or 0) for k in part.all_keys())

    def moving(n: int) -> list[dict[str, Any]]:
        job = f"mover-{n:03d}"
        return [{"type": "metrics", "job_id": job, "ts": 2_000 + n, "loss": 1.0, "step": 1},
                {"type": "job_started", "job_id": job, "ts": 2_000 + n,
                 "model_name": MODELS[n % 3], "name": "moved sweep"}]

    try:
        send([{"type": "job_started", "job_id": "zz-marker", "ts": 1.0}, *scenario(rng, 80)])
        wait_for(lambda: applied() == published, 30, "the workers to apply")
        with make_client(redis_url, Keys(prefix), partitions=4,
                         redis_cluster=cluster) as client, \
                client.websocket_connect("ws://127.0.0.1/ws?windows=1") as ws:
            page = WindowedPage(ws)
            page.watch(["zz-marker"])
            page.ask("flat", 15, {})
            page.ask("alpha", 10, {"model": "org/alpha-7b"})
            page.ask_all("unnamed", 50, {"model": None})
            page.check(everything(client))
            for round_ in range(3):
                events = [event for n in range(4) for event in moving(4 * round_ + n)]
                send(events + scenario(rng, 5, start=500 + 5 * round_))
                wait_for(lambda: applied() == published, 30,
                         "the workers to apply")
                send([{"type": "metrics", "job_id": "zz-marker", "step": round_ + 1,
                       "loss": 1.0}])
                wait_for(lambda: applied() == published, 30, "the marker")
                while True:
                    message = ws.receive_json()
                    page.apply(message)
                    if any(v["id"] == "zz-marker" and v["step"] == round_ + 1
                           for v in message["jobs"]):
                        break
                whole = everything(client)
                assert sum(v["id"].startswith("mover-") for v in whole) == 4 * (round_ + 1)
                page.check(whole)
    finally:
        for proc in workers:
            stop_process(proc)
        if not cluster:
            delete_prefix(r, prefix)
        r.close()


def test_updates_wait_as_they_came_while_a_client_restarts_or_asks_and_go_in_order() -> None:
    routed: list[str] = []

    def route(item: tuple[Any, ...]) -> str | None:
        routed.append(item[0])
        return None if item[0] == "skip" else f"message of {item[0]}"

    subscriber = Subscriber(asyncio.Queue(10))
    subscriber.offer(("early", "x"))  # before the client started routing
    subscriber.start_routing(route)
    assert (subscriber.restarting, subscriber.raw) == (True, 1)
    subscriber.offer(("restarting", "x"))
    subscriber.restarting = False
    subscriber.requesting = 1
    reply = Reply()
    assert subscriber.put_reply(reply)
    subscriber.offer(("asking", "x"))
    subscriber.requesting = 0
    subscriber.offer(("after", "x"))  # raw ones wait: this one waits behind them
    assert routed == [] and subscriber.raw == 4
    taken = [subscriber.queue.get_nowait() for _ in range(5)]
    assert taken[2] is reply  # between the updates before the request and those after
    for item in taken:
        if item is not reply:
            subscriber.route_queued(item)
    assert routed == ["early", "restarting", "asking", "after"] and subscriber.raw == 0
    subscriber.offer(("skip", "x"))  # routed at once now; nothing for this client
    subscriber.offer(("now", "x"))
    assert subscriber.queue.get_nowait() == (ROUTED, "message of now")
    assert subscriber.queue.empty()
    subscriber.offer(("big", "x" * (2 * 1024 * 1024)))  # routed in the client's task
    assert subscriber.raw == 1 and routed[-1] == "now"


def test_a_client_whose_routing_fails_or_who_falls_behind_starts_over() -> None:
    def broken(item: tuple[Any, ...]) -> str | None:
        raise KeyError("jobs")

    subscriber = Subscriber(asyncio.Queue(2))
    subscriber.start_routing(broken)
    subscriber.restarting = False
    subscriber.offer(("a", "x"))
    assert subscriber.queue.get_nowait() == RESYNC and subscriber.restarting
    assert subscriber.generation == 1
    subscriber.restarting = False
    first, second = Reply(), Reply()
    assert subscriber.put_reply(first) and subscriber.put_reply(second)
    assert not subscriber.put_reply(Reply())  # full: a summary instead, the replies dropped
    assert first.ready.is_set() and first.text is None and subscriber.generation == 2
    assert subscriber.queue.get_nowait() == RESYNC


# --- Races, made deterministic: a client over a fake socket, state written straight in -------


def stored(job_id: str, created_at: float, model: str | None = None,
           **fields: Any) -> dict[str, Any]:
    """A stored job state (``<prefix>jobs``) as the worker writes it."""
    state = JobState(id=job_id, created_at=created_at, updated_at=created_at,
                     model_name=model).public()
    state.update(fields)
    return state


class Direct:
    """State written straight into Redis, one commit at a time: the jobs, their order sets
    and an update; and what the hub would hand out for it."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        r.set(keys.order_built, 1)

    def commit(self, *jobs: dict[str, Any]) -> tuple[str, Shared]:
        k = self.keys
        with self.r.pipeline(transaction=True) as pipe:
            for job in jobs:
                pipe.hset(k.jobs, job["id"], orjson.dumps(job))
                for archived in (False, True):
                    pipe.zrem(k.order(archived), job["id"])
                    pipe.zrem(k.order(archived, job["model_name"]), job["id"])
                pipe.zadd(k.order(job["archived"]), {job["id"]: -job["created_at"]})
                pipe.zadd(k.order(job["archived"], job["model_name"]),
                          {job["id"]: -job["created_at"]})
            views = [job_view(job, None) for job in jobs]
            pipe.xadd(k.updates, {"data": orjson.dumps({"jobs": views, "models": []})})
            version = pipe.execute()[-1].decode()
        return version, Shared(update_message(version, orjson.dumps({"jobs": views})))


class FakeSocket:
    """What the client sends, and a gate that holds its sends (a slow client)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    def ask(self, message: dict[str, Any]) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": orjson.dumps(message)
                               .decode()})

    async def until(self, kind: str, count: int = 1) -> None:
        for _ in range(500):
            if sum(m["type"] == kind for m in self.sent) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind} message: {self.sent}")

    def steps(self, job_id: str) -> list[Any]:
        return [(m["type"], j["step"]) for m in self.sent
                for j in (m.get("jobs") if isinstance(m.get("jobs"), list) else [])
                if j["id"] == job_id]


async def running_client(redis_url: str, keys: Keys, queue: int = 100
                         ) -> tuple[WindowedClient, FakeSocket, Subscriber, list[Any]]:
    gw = Gateway.build(GatewaySettings(redis_url=redis_url, prefix=keys.prefix))
    socket = FakeSocket()
    subscriber = Subscriber(asyncio.Queue(queue))

    async def send(websocket: Any, subscriber: Subscriber, text: str) -> None:
        await socket.gate.wait()
        socket.sent.append(orjson.loads(text))

    async def never_too_slow(websocket: Any, subscriber: Subscriber) -> bool:
        return False

    client = WindowedClient(socket, gw, subscriber, send)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(client.updates(never_too_slow)),
             asyncio.create_task(client.requests())]
    await socket.until("summary")
    return client, socket, subscriber, tasks


async def stop(client: WindowedClient, tasks: list[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.gw.close()


async def test_what_was_routed_before_a_request_goes_out_before_its_reply(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    direct = Direct(r, keys)
    direct.commit(stored("X", 100.0), stored("Y", 99.0))
    client, socket, subscriber, tasks = await running_client(redis_url, keys)
    try:
        socket.ask({"type": "window", "id": "flat", "limit": 10})
        await socket.until("window")
        socket.gate.clear()  # the client reads slowly
        subscriber.offer(direct.commit(stored("X", 100.0, step=2)))  # routed at once, queued
        third = direct.commit(stored("X", 100.0, step=3))  # the hub has not read it yet
        socket.ask({"type": "window", "id": "flat", "limit": 10, "cursor": None})
        await asyncio.sleep(0.2)  # the request is read at step 3
        socket.gate.set()
        await socket.until("window", 2)
        subscriber.offer(third)  # the hub catches up: step 3 (not news), then 4
        subscriber.offer(direct.commit(stored("X", 100.0, step=4)))
        await asyncio.sleep(0.2)
        assert socket.steps("X")[1:] == [("update", 2), ("window", 3), ("update", 4)]
    finally:
        await stop(client, tasks)


async def test_a_client_that_falls_behind_during_a_request_starts_over_cleanly(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    direct = Direct(r, keys)
    direct.commit(stored("X", 100.0))
    client, socket, subscriber, tasks = await running_client(redis_url, keys, queue=3)
    release = asyncio.Event()
    read = client.reader.page

    async def slow_page(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await read(*args, **kwargs)

    try:
        client.reader.page = slow_page  # type: ignore[method-assign]
        socket.ask({"type": "window", "id": "flat", "limit": 10})
        await asyncio.sleep(0.05)
        assert subscriber.requesting == 1
        for step in range(4):  # they wait as they came, and overflow the queue
            subscriber.offer(direct.commit(stored("X", 100.0, step=step)))
        assert subscriber.restarting and subscriber.generation == 1
        release.set()  # the reply's turn ends with the request: then the summary
        await socket.until("summary", 2)
        await asyncio.sleep(0.1)
        assert [m["type"] for m in socket.sent] == ["summary", "summary"]  # no stale reply
        assert (subscriber.requesting, subscriber.restarting, subscriber.raw) == (0, False, 0)
        socket.ask({"type": "window", "id": "flat", "limit": 10})
        await socket.until("window")
        subscriber.offer(direct.commit(stored("X", 100.0, step=9)))
        await asyncio.sleep(0.1)
        assert socket.steps("X") == [("window", 3), ("update", 9)]
    finally:
        release.set()
        await stop(client, tasks)


def test_a_reply_moves_the_other_windows_as_an_update_would() -> None:
    watching = Watching(1)
    watching.start_over([parse_pos("1-0")])
    watching.took_page("done", Filters.of(status="completed"), True, [], None, {})
    watching.took_page("flat", Filters.of(), True, [view("X", 1.0)], None,
                       {"X": [parse_pos("2-0")]})
    finished = view("X", 1.0, status="completed")
    watching.watch([finished], {"X": [parse_pos("5-0")]})  # read after X finished
    assert watching.windows["done"].ids == {"X"}
    # its finishing update, older than the watch's copy, is not sent again
    assert watching.route(0, parse_pos("4-0"), Changes([finished])) == []
    archived = view("X", 1.0, status="completed", archived=True)
    assert watching.route(0, parse_pos("6-0"), Changes([archived])) == [archived]
    assert watching.windows["done"].ids == set() and watching.windows["flat"].ids == set()


def test_pages_past_ties_and_unstored_jobs_make_progress(redis_url: str, r: redis.Redis,
                                                         keys: Keys) -> None:
    """9,000 jobs created in the same second; the cursor's job leaves the set before the next
    page (archived); ids in a set with no stored job are passed over."""
    direct = Direct(r, keys)
    jobs = [stored(f"t{n:05d}", 500.0) for n in range(9000)]
    for start in range(0, len(jobs), 1000):
        direct.commit(*jobs[start:start + 1000])
    r.zadd(keys.order(False), {f"ghost{n}": -400.0 for n in range(3000)})
    with make_client(redis_url, keys) as client:
        first = client.get("/api/jobs", params={"limit": 5}).json()
        assert [v["id"] for v in first["jobs"]] == [f"t{n:05d}" for n in range(5)]
        direct.commit(stored("t00004", 500.0, archived=True))
        second = client.get("/api/jobs", params={"limit": 5, "cursor": first["next"]}).json()
        assert [v["id"] for v in second["jobs"]] == [f"t{n:05d}" for n in range(5, 10)]
        for params in ({}, {"status": "running"}):  # read in sets, or filtered in chunks
            views, _ = pages(client, 1000, **params)
            assert [v["id"] for v in views] == [j["id"] for j in jobs if j["id"] != "t00004"]
