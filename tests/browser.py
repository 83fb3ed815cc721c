"""Helpers for the page's browser tests: the real gateway served by uvicorn in a thread,
Debian's Chromium driven by Playwright, and the training runs the tests publish."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from monitor.settings import GatewaySettings
from web.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent
Q = "Qwen/Qwen2.5-7B-Instruct"


def artifacts_dir() -> Path:
    """Where the tests save screenshots: ``$PAGE_ARTIFACTS`` or ``tests/artifacts/``."""
    path = Path(os.environ.get("PAGE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class LiveGateway:
    """``monitor gateway`` (the real app under uvicorn) in a thread; can stop and start again
    on the same port."""

    def __init__(self, redis_url: str, prefix: str, port: int, **settings: Any) -> None:
        self.settings = GatewaySettings(redis_url=redis_url, prefix=prefix, port=port, **settings)
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port,
                                log_level="warning", ws="websockets-sansio",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"gateway:{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the gateway on port {self.port} did not start")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"the gateway on port {self.port} took over {timeout}s")
            time.sleep(0.02)
        self.server, self.thread = server, thread

    def stop(self) -> None:
        if self.server is None or self.thread is None:
            return
        self.server.should_exit = True
        self.thread.join(15)
        if self.thread.is_alive():  # pragma: no cover - would be a bug in shutdown
            raise RuntimeError(f"the gateway on port {self.port} did not stop")
        self.server = self.thread = None


def run_events(job_id: str, model: str | None, best: float | None, *, ts: float,
               name: str | None = None, epochs: int = 12, best_epoch: int = 5,
               upto: int | None = None, status: str | None = "completed",
               error: str | None = None, config: dict[str, Any] | None = None
               ) -> list[dict[str, Any]]:
    """The events of one training run: started, a metric point per epoch (eval loss lowest,
    exactly ``best``, at ``best_epoch``), a checkpoint at the best epoch, then finished.
    ``upto`` stops after that many epochs (a run still going when ``status`` is None)."""
    events: list[dict[str, Any]] = [{"type": "job_started", "job_id": job_id, "model_name": model,
                                     "total_epochs": epochs, "name": name, "ts": ts,
                                     "gpu_count": 2,
                                     "config": config or {"lr": 2e-5, "lora_rank": 16}}]
    last = epochs if upto is None else upto
    for epoch in range(1, last + 1):
        point: dict[str, Any] = {"type": "metrics", "job_id": job_id, "epoch": epoch,
                                 "step": epoch * 100, "ts": ts + epoch,
                                 "loss": round(0.6 * (best or 0.5) + 1.1 / (1 + 0.35 * epoch), 4)}
        if best is not None:
            point["eval_loss"] = best if epoch == best_epoch else round(
                best + 0.012 * abs(epoch - best_epoch) + 0.002 * (epoch > best_epoch), 4)
        events.append(point)
        if best is not None and epoch == best_epoch:
            events.append({"type": "checkpoint", "job_id": job_id, "epoch": epoch,
                           "step": epoch * 100, "path": f"checkpoint-{epoch}", "ts": ts + epoch})
    if status is not None:
        finished: dict[str, Any] = {"type": "job_finished", "job_id": job_id, "status": status,
                                    "ts": ts + last + 1}
        if error is not None:
            finished["error"] = error
        events.append(finished)
    return events


def board(now: float) -> list[dict[str, Any]]:
    """The runs of the original design's workflows, and a few others around them.

    Three runs of Qwen/Qwen2.5-7B-Instruct with best eval losses 0.2345 (best), 0.2701
    (15.2% worse, orange) and 0.3456 (47.4% worse, red); a model with two runs; a run whose
    model path is cleaned; a failed and a running run; a job that never named its model."""
    events: list[dict[str, Any]] = []
    events += run_events("qwen-a", Q, 0.2345, ts=now - 9000, name="qwen7b-lr2e-5-r16")
    events += run_events("qwen-b", Q, 0.2701, ts=now - 8000, name="qwen7b-lr1e-4-r32",
                         config={"lr": 1e-4, "lora_rank": 32})
    events += run_events("qwen-c", Q, 0.3456, ts=now - 7000, name="qwen7b-lr3e-4-r64",
                         best_epoch=3, config={"lr": 3e-4, "lora_rank": 64})
    events += run_events("llama-a", "meta-llama/Llama-3.2-3B-Instruct", 0.6712, ts=now - 6000,
                         name="llama3b-baseline", epochs=8, best_epoch=6)
    events += run_events("llama-b", "meta-llama/Llama-3.2-3B-Instruct", 0.7160, ts=now - 5000,
                         name="llama3b-long-context-experiment-with-a-much-longer-name",
                         epochs=8, best_epoch=4, status="failed",
                         error="CUDA out of memory. Tried to allocate 2.00 GiB")
    events += run_events("qwen3-a", "/data/huggingface_models/Qwen-Qwen3-1.7B/snapshots/9a2c1f",
                         0.8104, ts=now - 4000, epochs=5, best_epoch=4, upto=4, status=None)
    events += run_events("mistral-a", "mistralai/Mistral-7B-Instruct-v0.3", 0.5821,
                         ts=now - 3000, name="mistral-dpo", epochs=6, best_epoch=5,
                         status="cancelled")
    events.append({"type": "job_started", "job_id": "mystery-1", "ts": now - 2000,
                   "total_epochs": 3})
    return events
