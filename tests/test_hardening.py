"""Cheap abuse must cost the gateway almost nothing: each test here makes a few requests that
once took gigabytes or stalled every other client, against a real gateway process, and checks
its peak memory (from /proc) and what the abuser is told."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from monitor.keys import Keys
from monitor.records import split
from monitor.settings import GatewaySettings, load
from tests.conftest import free_port
from tests.helpers import env_for, spawn_monitor, stop_process
from web.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MB = 1024 * 1024
GROWTH_BOUND = 150 * MB  # peak resident memory a few abusive clients may add


def _status(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


@dataclass
class Gateway:
    """``monitor gateway`` as a child process on a free port."""

    proc: Any
    port: int

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")

    def peak(self) -> int:
        return _status(self.proc.pid, "VmHWM")

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()


@pytest.fixture
def gateway(redis_url: str, keys: Keys, tmp_path: Path) -> Iterator[Gateway]:
    port = free_port()
    proc = spawn_monitor(env_for(redis_url, keys.prefix), tmp_path / "gateway.log", "gateway",
                         "--port", str(port), "--log-level", "WARNING")
    gw = Gateway(proc, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if gw.get("/healthz", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((tmp_path / "gateway.log").read_text())
        time.sleep(0.05)
    yield gw
    stop_process(proc)


def _grew(gw: Gateway, before: int) -> int:
    growth = gw.peak() - before
    print(f"gateway peak RSS grew by {growth / MB:.0f} MB (from {before / MB:.0f} MB)")
    return growth


# --- Resuming /ws from far back -------------------------------------------------------------


def test_resuming_from_far_back_costs_a_snapshot_not_the_whole_updates_stream(
        gateway: Gateway, r: redis.Redis, keys: Keys) -> None:
    """1,100 updates of 60 KB kept; 20 clients resume from the oldest at once. Each must get a
    snapshot without the gateway reading the 66 MB they missed."""
    fat = orjson.dumps({"jobs": [{"id": "j", "pad": "x" * 60_000}]})
    with r.pipeline(transaction=False) as pipe:
        for _ in range(1100):
            pipe.xadd(keys.updates, {"data": fat})
        ids = [i.decode() for i in pipe.execute()]
    url = f"ws://127.0.0.1:{gateway.port}/ws"
    with connect(url, max_size=None) as warm:  # the snapshot, built once and cached
        assert json.loads(warm.recv(timeout=10))["type"] == "snapshot"
    before = gateway.peak()

    def resume(since: str) -> list[dict[str, Any]]:
        with connect(f"{url}?since={since}", max_size=None, open_timeout=30) as ws:
            first = json.loads(ws.recv(timeout=60))
            out = [first]
            while first["type"] == "update" and out[-1]["version"] != ids[-1]:
                out.append(json.loads(ws.recv(timeout=30)))
            return out

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(resume, [ids[0]] * 20))
    assert [a[0]["type"] for a in answers] == ["snapshot"] * 20
    assert _grew(gateway, before) < GROWTH_BOUND

    # Far back in bytes though few in count (200 of 60 KB): a snapshot too.
    assert resume(ids[-201])[0]["type"] == "snapshot"
    # A short gap is replayed, every update in order, as before.
    replayed = resume(ids[-6])
    assert [m["type"] for m in replayed] == ["update"] * 5
    assert [m["version"] for m in replayed] == ids[-5:]


# --- POST /api/events -----------------------------------------------------------------------


def _post(port: int, body: bytes, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/events", body=body,
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_parsed(
        gateway: Gateway, r: redis.Redis, keys: Keys) -> None:
    """16 MiB of ``[[],[],...]`` (5.6 million lists) three times in a row, while another
    client polls /healthz: refused by its shape as it arrives, memory stays flat, and the
    other client keeps being answered."""
    body = b"[" + b",".join([b"[]"] * (16 * MB // 3 - 1)) + b"]"
    assert len(body) < 16 * MB
    before = gateway.peak()
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert gateway.get("/healthz")[0] == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        answers = [_post(gateway.port, body) for _ in range(3)]
    finally:
        stop.set()
        poller.join(30)
    print(f"/healthz while refusing: {len(latencies)} answers, slowest "
          f"{max(latencies) * 1000:.1f} ms")
    assert _grew(gateway, before) < GROWTH_BOUND
    for status, answer in answers:
        assert (status, answer["detail"]) == (
            413, "body holds more than 100000 objects and arrays; send at most 1000 events")
    assert latencies and r.xlen(keys.events) == 0

    # A full batch of real events still goes through, as one.
    event = {"type": "metrics", "job_id": "run-1", "step": 1, "loss": 0.5, "eval_loss": 0.6}
    assert _post(gateway.port, orjson.dumps([event] * 1000)) == (202, {"accepted": 1000})


# --- Inbound WebSocket frames ---------------------------------------------------------------


def _ws_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _close_code(sock: socket.socket) -> int | None:
    """Read server frames until a close frame; its code (None if the connection just ends)."""
    try:
        while True:
            first, second = _recv_exactly(sock, 2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", _recv_exactly(sock, 2))[0]
            elif length == 127:
                length = struct.unpack("!Q", _recv_exactly(sock, 8))[0]
            payload = _recv_exactly(sock, length)
            if first & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else None
    except (ConnectionError, OSError):
        return None


def test_a_huge_client_frame_is_closed_with_1009_as_its_header_arrives(
        gateway: Gateway) -> None:
    """30 clients each announce a 15 MB frame and start sending it: each is closed with 1009
    at once, and none of those megabytes are kept."""
    size = 15 * 1000 * 1000
    # A binary frame, masked with a zero key (so the payload is sent as it is).
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size) + b"\0\0\0\0"
    chunk = b"\0" * (256 * 1024)
    before = gateway.peak()

    def abuse(_: int) -> int | None:
        with _ws_handshake(gateway.port) as sock:
            sock.sendall(header + chunk)
            sock.settimeout(5)
            code = _close_code(sock)  # the old gateway waited for the rest instead
            sock.settimeout(2)
            with contextlib.suppress(OSError):  # the rest, as far as the server takes it
                for _ in range(size // len(chunk)):
                    sock.sendall(chunk)
            return code

    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(abuse, range(30)))
    assert _grew(gateway, before) < GROWTH_BOUND
    assert codes == [1009] * 30


# --- URLs -----------------------------------------------------------------------------------


def test_a_query_string_of_100000_commas_gets_an_answer_not_a_reset(gateway: Gateway) -> None:
    for _ in range(20):  # it used to reset now and then, when the URL came in two reads
        status, body = gateway.get("/api/compare?ids=" + "," * 100_000)
        assert (status, json.loads(body)["detail"]) == (414, "the URL is over 16384 bytes")


def test_the_page_and_its_files_carry_their_security_headers(gateway: Gateway) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/", timeout=10) as answer:
        headers = answer.headers
    assert headers["Content-Security-Policy"] == (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
    assert headers["X-Frame-Options"] == "DENY"


# --- Event ids of any form ------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _publish_and_wait(r: redis.Redis, keys: Keys, events: list[dict[str, Any]]) -> None:
    with r.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.events, {"data": orjson.dumps(event)})
        last = pipe.execute()[-1]
    deadline = time.monotonic() + 120
    while r.get(keys.applied) != last:
        assert time.monotonic() < deadline, "the worker did not apply the events"
        time.sleep(0.02)


def _metrics(job_id: str, first: int, count: int) -> list[dict[str, Any]]:
    return [{"type": "metrics", "job_id": job_id, "step": i, "loss": 1 / (1 + i),
             "event_id": f"{uuid.UUID(int=i + hash(job_id) % 2**64)}"}
            for i in range(first, first + count)]


def test_a_job_with_60000_foreign_event_ids_costs_no_more_per_event_than_a_fresh_one(
        redis_url: str, r: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    """Ids not of the SDK's form (UUIDs, from any language) once lived in the job's fold
    state and were rewritten on every commit of that job. Measured in the worker's CPU
    seconds, in small batches (a commit every 10 events, as at a trainer's pace)."""
    env = env_for(redis_url, keys.prefix)
    loader = spawn_monitor(env, tmp_path / "loader.log", "worker", "--block", "0.05")
    try:
        _publish_and_wait(r, keys, _metrics("old", 0, 60_000))
    finally:
        stop_process(loader)
    worker = spawn_monitor(env, tmp_path / "worker.log", "worker", "--batch-size", "10",
                           "--block", "0.05")
    try:
        _publish_and_wait(r, keys, _metrics("warm-up", 0, 100))
        cost = {}
        for job_id, first in (("fresh", 0), ("old", 60_000)):
            started = _cpu_seconds(worker.pid)
            _publish_and_wait(r, keys, _metrics(job_id, first, 3000))
            cost[job_id] = (_cpu_seconds(worker.pid) - started) / 3000
    finally:
        stop_process(worker)
    ratio = cost["old"] / cost["fresh"]
    print(f"worker CPU per event: fresh job {cost['fresh'] * 1e6:.0f} µs, job with 60,000 "
          f"foreign ids {cost['old'] * 1e6:.0f} µs ({ratio:.2f}x); its fold state "
          f"{len(split(r.hget(keys.jobs, 'old'))[1] or b'')} bytes, stored set "
          f"{r.memory_usage(keys.seen('old')) / MB:.1f} MB for {r.scard(keys.seen('old'))} ids")
    assert r.scard(keys.seen("old")) == 63_000 and int(r.hget(keys.stats, "applied")) == 66_100
    assert ratio < 2


# --- An open gateway on the network ---------------------------------------------------------


def test_a_gateway_reachable_from_the_network_without_a_token_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    for command in ("gateway", "up"):
        done = subprocess.run([sys.executable, "-m", "monitor.cli", command, "--host",
                               "0.0.0.0"], capture_output=True, text=True, timeout=60, env=env,
                              check=False)
        assert done.returncode == 2
        assert done.stderr == (
            f"monitor {command}: error: --host / MONITOR_HOST '0.0.0.0' is reachable from "
            "the network, so set MONITOR_TOKEN (a long random secret) or it is an open door "
            "to every run; --insecure-no-token / MONITOR_INSECURE_NO_TOKEN=true accepts that "
            "risk\n")
    assert load(GatewaySettings, {"host": "0.0.0.0", "insecure_no_token": "true"}).host \
        == "0.0.0.0"
    assert load(GatewaySettings, {"host": "10.0.0.5"}, {"MONITOR_TOKEN": "s3cret"}).token \
        == "s3cret"
    for local in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert load(GatewaySettings, {"host": local}).token is None


def test_compose_asks_for_a_token_before_it_publishes_the_gateway() -> None:
    compose = yaml.safe_load((Path(__file__).parents[1] / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["MONITOR_TOKEN"].startswith("${MONITOR_TOKEN:?")
    assert gateway["environment"]["MONITOR_ALLOWED_HOSTS"] == "${MONITOR_ALLOWED_HOSTS:-}"


def test_allowed_hosts_are_the_only_names_a_network_gateway_answers_to(
        redis_url: str, keys: Keys) -> None:
    settings = GatewaySettings(redis_url=redis_url, prefix=keys.prefix, host="0.0.0.0",
                               token="s3cret", allowed_hosts="monitor.example.com")
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(settings), base_url="http://monitor.example.com") as client:
        assert client.get("/api/jobs", headers=auth).status_code == 200
        rebound = client.get("/api/jobs", headers={**auth, "Host": "evil.example"})
        assert rebound.status_code == 400
        assert rebound.json()["detail"] == (
            "unknown host 'evil.example'; open this server as 127.0.0.1 or localhost or "
            "monitor.example.com (MONITOR_ALLOWED_HOSTS)")
        assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200


def test_the_token_cookie_is_secure_over_https_and_origins_must_match_the_scheme(
        redis_url: str, keys: Keys) -> None:
    settings = GatewaySettings(redis_url=redis_url, prefix=keys.prefix, token="s3cret")
    with TestClient(create_app(settings), base_url="https://127.0.0.1") as client:
        cookie = client.get("/?token=s3cret").headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        assert "Secure" not in client.get("/?token=s3cret").headers["set-cookie"]
        auth = {"Authorization": "Bearer s3cret"}
        event = {"type": "metrics", "job_id": "a", "loss": 0.5}
        other_scheme = client.post("/api/events", json=event,
                                   headers={**auth, "Origin": "https://127.0.0.1"})
        assert other_scheme.status_code == 403
        same = client.post("/api/events", json=event,
                           headers={**auth, "Origin": "http://127.0.0.1"})
        assert same.status_code == 202
        with pytest.raises(WebSocketDisconnect), client.websocket_connect(
                "ws://127.0.0.1/ws?token=s3cret", headers={"Origin": "https://127.0.0.1"}) as ws:
            ws.receive_text()
        with client.websocket_connect("ws://127.0.0.1/ws?token=s3cret",
                                      headers={"Origin": "http://127.0.0.1"}) as ws:
            assert json.loads(ws.receive_text())["type"] == "snapshot"


def test_every_answer_refuses_to_be_framed(redis_url: str, keys: Keys) -> None:
    settings = GatewaySettings(redis_url=redis_url, prefix=keys.prefix)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        for path in ("/", "/static/app.js", "/api/jobs", "/docs", "/nope"):
            headers = client.get(path).headers
            assert headers["X-Frame-Options"] == "DENY", path
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
            assert headers["X-Content-Type-Options"] == "nosniff", path
        assert client.get("/api/jobs").headers["Content-Security-Policy"] == \
            "frame-ancestors 'none'"
