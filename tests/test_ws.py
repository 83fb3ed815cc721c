"""``/ws``: snapshot, live updates in order, resume with ``since``, slow clients, security."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from monitor.keys import Keys
from monitor.rules import parse_pos
from tests.conftest import free_port
from tests.gateway_helpers import RunningWorker, make_client, publish
from web.hub import Hub

pytestmark = pytest.mark.timeout(60)

Q = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture
def client(redis_url: str, keys: Keys) -> Iterator[TestClient]:
    with make_client(redis_url, keys) as c:
        yield c


def metrics(job: str, eval_loss: float, **kw: Any) -> dict[str, Any]:
    return {"type": "metrics", "job_id": job, "model_name": Q, "eval_loss": eval_loss, **kw}


def test_snapshot_then_updates_in_order(client: TestClient, r: redis.Redis, keys: Keys,
                                        worker: RunningWorker) -> None:
    publish(r, keys, [metrics("a", 0.5)])
    worker.wait_applied()
    with client.websocket_connect("ws://127.0.0.1/ws") as ws:
        snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot"
        assert [j["id"] for j in snapshot["jobs"]] == ["a"]
        for i, loss in enumerate([0.45, 0.4, 0.35]):
            publish(r, keys, [metrics("a", loss, step=i)])
            worker.wait_applied()
        versions, losses = [], []
        for _ in range(3):
            update = ws.receive_json()
            assert update["type"] == "update"
            versions.append(parse_pos(update["version"]))
            losses.append(update["jobs"][0]["best_eval_loss"])
        assert losses == [0.45, 0.4, 0.35]
        assert versions == sorted(versions) and versions[0] > parse_pos(snapshot["version"])


def test_an_archive_click_moves_the_trophy_and_every_delta_in_one_update(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [metrics("a", 0.2, ts=1.0), metrics("b", 0.25, ts=2.0),
                      metrics("c", 0.3, ts=3.0)])
    worker.wait_applied()
    with client.websocket_connect("ws://127.0.0.1/ws") as ws:
        ws.receive_json()
        assert client.post("/api/jobs/a/archive").status_code == 202
        update = ws.receive_json()
        views = {j["id"]: j for j in update["jobs"]}
        assert set(views) == {"a", "b", "c"}
        assert (views["a"]["archived"], views["a"]["is_best"], views["a"]["delta_pct"]) == (
            True, False, None)
        assert views["b"]["is_best"] is True
        assert views["c"]["delta_pct"] == pytest.approx(20.0) and views["c"]["tier"] == "orange"
        assert client.post("/api/jobs/a/restore").status_code == 202
        views = {j["id"]: j for j in ws.receive_json()["jobs"]}
        assert views["a"]["is_best"] is True
        assert views["c"]["delta_pct"] == pytest.approx(50.0) and views["c"]["tier"] == "red"


def test_resume_with_since_delivers_every_missed_change_exactly_once(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [metrics("a", 1.0)])
    worker.wait_applied()
    with client.websocket_connect("ws://127.0.0.1/ws") as ws:
        version = ws.receive_json()["version"]
    missed = [round(0.9 - i / 100, 2) for i in range(20)]
    for loss in missed:  # one commit each: 20 updates while disconnected
        publish(r, keys, [metrics("a", loss)])
        worker.wait_applied()
    with client.websocket_connect(f"ws://127.0.0.1/ws?since={version}") as ws:
        seen = [ws.receive_json() for _ in range(len(missed))]
        assert all(m["type"] == "update" for m in seen)
        assert [m["jobs"][0]["best_eval_loss"] for m in seen] == missed
        publish(r, keys, [metrics("a", 0.1)])
        worker.wait_applied()
        live = ws.receive_json()  # then live, with nothing repeated
        assert live["jobs"][0]["best_eval_loss"] == 0.1
        assert parse_pos(live["version"]) > parse_pos(seen[-1]["version"])


@pytest.mark.parametrize("since", ["999999999999999-0", "garbage"])
def test_resume_from_an_unknown_version_gets_a_fresh_snapshot(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker,
        since: str) -> None:
    publish(r, keys, [metrics("a", 1.0)])
    worker.wait_applied()
    with client.websocket_connect(f"ws://127.0.0.1/ws?since={since}") as ws:
        message = ws.receive_json()
        assert message["type"] == "snapshot" and [j["id"] for j in message["jobs"]] == ["a"]


def test_resume_after_the_version_was_trimmed_gets_a_fresh_snapshot(
        client: TestClient, r: redis.Redis, keys: Keys, worker: RunningWorker) -> None:
    publish(r, keys, [metrics("a", 1.0)])
    worker.wait_applied()
    with client.websocket_connect("ws://127.0.0.1/ws") as ws:
        version = ws.receive_json()["version"]
    publish(r, keys, [metrics("a", 0.5)])
    worker.wait_applied()
    r.xtrim(keys.updates, maxlen=0)  # as if the updates were trimmed since
    with client.websocket_connect(f"ws://127.0.0.1/ws?since={version}") as ws:
        message = ws.receive_json()
        assert message["type"] == "snapshot"
        assert message["jobs"][0]["best_eval_loss"] == 0.5


async def test_a_client_that_never_reads_does_not_delay_others_and_memory_stays_bounded(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    hub = Hub(redis.asyncio.Redis.from_url(redis_url), keys, queue_size=10, block_ms=100)
    reader = asyncio.create_task(hub.run())
    try:
        async with hub.subscribe() as stuck, hub.subscribe() as reading:
            for _ in range(500):
                if hub.last is not None:
                    break
                if reader.done():
                    reader.result()
                await asyncio.sleep(0.01)
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            received = 0
            big = orjson.dumps({"jobs": [{"id": "x" * 1000}]})
            for i in range(300):
                r.xadd(keys.updates, {"data": big})
                await asyncio.wait_for(reading.next(), 2)
                received += 1
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            assert received == 300  # the reading client got every one, at once
            assert stuck.queue.qsize() <= 10  # the stuck one holds at most its bound
            assert "resync" in [stuck.queue.get_nowait() for _ in range(stuck.queue.qsize())]
            grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
            assert grown < 200_000  # not 300 KB of queued messages
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await hub.redis.aclose()


def test_a_slow_client_is_resynced_with_a_fresh_snapshot(
        redis_url: str, keys: Keys, r: redis.Redis, worker: RunningWorker) -> None:
    publish(r, keys, [metrics("a", 1.0)])
    worker.wait_applied()
    with make_client(redis_url, keys, ws_queue=2) as client, \
            client.websocket_connect("ws://127.0.0.1/ws") as ws:
        ws.receive_json()
        hub = client.app.state.gateway.hub  # type: ignore[attr-defined]
        (subscriber,) = hub.subscribers
        for i in range(3):  # more than its queue holds, before it reads any
            subscriber.offer((f"{10**14 + i}-0", "{}"))
        message = ws.receive_json()
        assert message["type"] == "snapshot"
        assert message["jobs"][0]["best_eval_loss"] == 1.0


def test_wrong_or_missing_token(redis_url: str, keys: Keys) -> None:
    with make_client(redis_url, keys, token="s3cret") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            answer = client.get("/api/jobs", headers=headers)
            assert answer.status_code == 401
            assert answer.json()["detail"].startswith("missing or wrong token")
            assert answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/jobs", headers={"Authorization": "Bearer s3cret"}).status_code \
            == 200
        client.cookies.set("monitor_token", "s3cret")
        assert client.get("/api/models").status_code == 200
        client.cookies.clear()
        for url in ("/ws", "/ws?token=wrong"):
            with client.websocket_connect("ws://127.0.0.1" + url) as ws, pytest.raises(WebSocketDisconnect) as e:
                ws.receive_json()
            assert e.value.code == 1008
        with client.websocket_connect("ws://127.0.0.1/ws?token=s3cret") as ws:
            assert ws.receive_json()["type"] == "snapshot"
        assert client.get("/healthz").status_code == 200  # health stays open


def test_a_foreign_origin_is_refused(redis_url: str, keys: Keys) -> None:
    with make_client(redis_url, keys, allowed_origins="https://ops.example.com") as client:
        # Closed before the handshake completes: a browser sees HTTP 403 (under uvicorn);
        # the test client reports the close code.
        with pytest.raises(WebSocketDisconnect) as denied, \
                client.websocket_connect("ws://127.0.0.1/ws", headers={"Origin": "https://evil.example"}):
            pass
        assert denied.value.code == 1008
        for origin in ("http://127.0.0.1", "https://ops.example.com"):
            with client.websocket_connect("ws://127.0.0.1/ws", headers={"Origin": origin}) as ws:
                assert ws.receive_json()["type"] == "snapshot"


@pytest.mark.timeout(30)
def test_while_redis_is_away_a_client_is_told_so_at_once(
        keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: every connection waited START_WAIT for a hub that could not start, open and
    # silent, so the page said "Live" while Redis was down. An hour's wait makes that hang.
    monkeypatch.setattr("web.hub.START_WAIT", 3600.0)
    away = f"redis://127.0.0.1:{free_port()}/0"
    with make_client(away, keys) as client:
        for _ in range(2):  # the hub has tried and failed by the second
            with client.websocket_connect("ws://127.0.0.1/ws") as ws, \
                    pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert (closed.value.code, closed.value.reason) == (
                1013, "Redis unreachable; reconnect")


def test_clients_get_every_update_across_a_redis_restart(redis_server_factory: Any) -> None:
    server = redis_server_factory(persistent=True)
    server.start()
    keys = Keys("t:")
    direct = redis.Redis.from_url(server.url)

    def update(job: str) -> str:
        data = orjson.dumps({"jobs": [{"id": job}]})
        return direct.xadd(keys.updates, {"data": data}).decode()

    update("before")
    with make_client(server.url, keys) as client, client.websocket_connect("ws://127.0.0.1/ws") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        first = update("a")
        assert ws.receive_json()["version"] == first
        server.stop()
        assert client.get("/healthz").status_code == 503
        server.start()
        after = [update("b"), update("c")]
        seen: list[str] = []
        while not seen or seen[-1] != after[-1]:
            message = ws.receive_json()
            assert message["type"] == "update"  # no resync needed: nothing was lost
            seen.append(message["version"])
            got = [j["id"] for j in message["jobs"]]
            assert "a" not in got  # nothing repeated
        assert set(after) >= set(seen)
        assert client.get("/healthz").status_code == 200
    direct.close()


def test_resume_from_a_version_redis_would_refuse_gets_a_snapshot(client: TestClient) -> None:
    with client.websocket_connect("ws://127.0.0.1/ws?since=18446744073709551616-0") as ws:
        assert ws.receive_json()["type"] == "snapshot"


def test_a_subscriber_is_bounded_in_bytes_too() -> None:
    from web.hub import Subscriber

    subscriber = Subscriber(asyncio.Queue(1000), max_bytes=1000)
    subscriber.offer(("1-0", "x" * 600))
    subscriber.offer(("2-0", "x" * 600))  # 1,200 bytes: past the bound
    assert subscriber.queue.qsize() == 1 and subscriber.queue.get_nowait() == "resync"
    subscriber.offer(("3-0", "x" * 5000))  # one big update alone still passes
    assert subscriber.queue.qsize() == 1 and subscriber.queued_bytes == 5000


async def test_a_client_that_stopped_reading_is_dropped() -> None:
    from web.hub import Subscriber
    from web.ws import TooSlow, send, watchdog

    class Stuck:
        async def send_text(self, text: str) -> None:
            await asyncio.sleep(3600)  # its TCP buffer is full

    subscriber = Subscriber(asyncio.Queue(10))
    sending = asyncio.create_task(send(Stuck(), subscriber, "{}"))  # type: ignore[arg-type]
    with pytest.raises(TooSlow):
        await asyncio.wait_for(watchdog(subscriber, 0.2), 5)
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)


def test_updates_read_together_reach_clients_as_one_message() -> None:
    from web.hub import merge_updates, with_version

    entries = [("1-0", b'{"jobs":[{"id":"a","v":1},{"id":"b","v":1}]}'),
               ("2-0", b'{"jobs":[{"id":"a","v":2}]}'),
               ("3-0", b'{"jobs":[{"id":"c","v":1}]}')]
    version, body = merge_updates(entries)
    assert version == "3-0"
    assert orjson.loads(with_version(version, body)) == {
        "type": "update", "version": "3-0",
        "jobs": [{"id": "b", "v": 1}, {"id": "a", "v": 2}, {"id": "c", "v": 1}]}
    version, body = merge_updates(entries[:1])
    assert with_version(version, body) == (
        '{"type":"update","version":"1-0","jobs":[{"id":"a","v":1},{"id":"b","v":1}]}')


async def test_a_hub_that_fell_behind_the_trimming_resyncs_everyone(
        redis_url: str, keys: Keys, r: redis.Redis) -> None:
    if int(r.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("Redis 6.2 does not count the entries a stream ever had, so a hub that "
                    "never read cannot tell that some were trimmed")
    hub = Hub(redis.asyncio.Redis.from_url(redis_url), keys, queue_size=10, block_ms=50)
    async with hub.subscribe() as subscriber:
        hub.last, hub.consumed = "0-0", 0  # as if started long ago and never read since
        for _ in range(20):
            r.xadd(keys.updates, {"data": b'{"jobs":[]}'})
        r.xtrim(keys.updates, maxlen=5, approximate=False)  # 15 gone before the hub read them
        reader = asyncio.create_task(hub.run())
        try:
            assert await asyncio.wait_for(subscriber.next(), 5) == "resync"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await hub.redis.aclose()
