"""Slow and dead WebSocket clients: 50 clients that never read beside one normal client, while
the gateway fans out 500 updates/s. The normal client's latency, the gateway's memory, and
when the stuck clients are dropped.

    python -m bench.slow_clients [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import redis
from websockets.sync.client import connect

from bench.common import (
    Histogram,
    delete_prefix,
    free_port,
    headline,
    machine_line,
    peak_rss_mb,
    redis_url,
    rss_mb,
    start_monitor,
    stop_process,
    table,
    unique_prefix,
    verdict,
    wait_http_ok,
)
from monitor.keys import Keys

VIEW = {"id": "job-1", "model_name": "Qwen/Qwen2.5-7B-Instruct", "status": "running",
        "best_eval_loss": 0.5, "padding": "x" * 400}


def stuck_client(port: int) -> socket.socket:
    """A WebSocket handshake, then never a read: its receive buffer fills and stays full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def ws_clients(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("monitor_websocket_clients "):
                return int(float(line.split()[1]))
    return -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="6 s instead of 30 s, and --ping 2 (stuck clients go after ~4 s)")
    parser.add_argument("--stuck", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--ping", type=float, default=None,
                        help="the gateway's --ws-ping (default 5; 2 with --quick)")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.quick else 30.0
    if args.ping is None:
        args.ping = 2.0 if args.quick else 5.0

    url = redis_url()
    client = redis.Redis.from_url(url)
    prefix = unique_prefix("slow")
    keys = Keys(prefix)
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    gateway = start_monitor("gateway", ["--redis-url", url, "--prefix", prefix, "--port",
                                        str(port), "--ws-ping", str(args.ping)],
                            logs / "gateway.log")
    stuck: list[socket.socket] = []
    latency = Histogram()
    received = 0
    done = threading.Event()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", gateway)
        idle_mb = rss_mb(gateway.pid)
        stuck = [stuck_client(port) for _ in range(args.stuck)]

        def normal() -> None:
            nonlocal received
            with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                ws.recv(timeout=10)  # the snapshot
                while not done.is_set():
                    try:
                        message = json.loads(ws.recv(timeout=1))
                    except TimeoutError:
                        continue
                    now = time.time()
                    for job in message["jobs"]:
                        latency.add(now - job["updated_at"])
                    received += 1

        reader = threading.Thread(target=normal, daemon=True)
        reader.start()
        time.sleep(1)
        connected = ws_clients(port)
        counts, rss = [], []
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            sent += 1
            view = {**VIEW, "seq": sent, "updated_at": time.time()}
            client.xadd(keys.updates, {"data": orjson.dumps({"jobs": [view]})},
                        maxlen=10_000, approximate=True)
            if sent % int(args.rate) == 0:
                counts.append(ws_clients(port))
                rss.append(rss_mb(gateway.pid))
            time.sleep(max(0.0, start + sent / args.rate - time.perf_counter()))
        time.sleep(1)
        done.set()
        reader.join(5)
        peak = peak_rss_mb(gateway.pid)
    finally:
        for sock in stuck:
            sock.close()
        stop_process(gateway, "gateway")
        delete_prefix(client, prefix)
        client.close()

    dropped_at = next((i + 1 for i, c in enumerate(counts) if c <= 1), None)
    print("## Slow and dead WebSocket clients\n")
    print(machine_line(redis.Redis.from_url(url)) + "\n")
    print(f"`monitor gateway --ws-ping {args.ping:g}` alone; this process XADDs {args.rate:.0f} "
          f"updates/s for {seconds:.0f}s to `<prefix>updates`; {args.stuck} clients complete "
          "the WebSocket handshake and never read (4 KB receive buffers); one normal client "
          "reads. Latency = arrival − the update's `updated_at`.\n")
    print(table(
        ["stuck clients", "updates sent", "normal client: messages", "latency p50 ms", "p95",
         "p99", "max", "clients connected at start", "stuck ones dropped after",
         "gateway RSS MB idle → peak (→ end)"],
        [[str(args.stuck), f"{sent:,}", f"{received:,}",
          *(f"{latency.quantile(q) * 1e3:.1f}" for q in (0.5, 0.95, 0.99)),
          f"{latency.max * 1e3:.1f}", str(connected),
          f"{dropped_at} s" if dropped_at else "not within the run",
          f"{idle_mb:.0f} → {peak:.0f} (→ {rss[-1]:.0f})" if rss else "–"]]))
    p99 = latency.quantile(0.99) * 1e3
    headline(f"a normal client's p99 ms beside {args.stuck} stuck ones", f"{p99:.1f}", "< 100",
             verdict(p99 < 100))
    print(f"\n- normal client p99 {p99:.1f} ms: bar < 100 ms {'met' if p99 < 100 else 'NOT met'}")
    print(f"- clients counted by the gateway each second: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
