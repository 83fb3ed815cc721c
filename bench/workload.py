"""A synthetic but realistic event stream for benchmarks. Pure: no I/O, no clock.

Each job writes what a fine-tuning trainer writes: a ``job_started`` (model among the
models, ``total_epochs``, a small ``config``), then mostly ``metrics`` (step increasing,
``loss``, every 10th with ``eval_loss``), a ``checkpoint`` after every 2nd evaluation, and
a ``job_finished`` as its last event when it has room for one. ``events`` are spread evenly
over ``jobs``; a job with only two events is a run still going (``job_started`` + metrics).

Jobs are interleaved the way a busy cluster writes them: ``concurrency`` jobs are running at
once, the next event comes from a random one of them, and a finished job is replaced by the
next job. Half the jobs carry SDK-like ``event_id`` values (``<uid>:<n>``), half none (raw
``XADD``). The same seed gives the same stream.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

EVAL_EVERY = 10  # one metrics event in 10 carries eval_loss
CKPT_EVERY_EVALS = 2  # a checkpoint after every 2nd evaluation
STEPS_PER_LOG = 10  # a trainer logs every 10 optimizer steps
TS_STEP = 0.005  # seconds between consecutive events of the whole stream


@dataclass(frozen=True)
class Workload:
    """What to generate: ``events`` entries over ``jobs`` jobs and ``models`` models."""

    events: int
    jobs: int
    models: int
    concurrency: int = 1000  # jobs writing at the same time
    seed: int = 1
    start_ts: float = 1_700_000_000.0  # the ``ts`` of the first event

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.models < 1 or self.concurrency < 1:
            raise ValueError("jobs, models and concurrency must be >= 1")
        if self.events < 2 * self.jobs:
            raise ValueError(f"{self.events} events are too few for {self.jobs} jobs "
                             f"(each needs at least job_started and one metrics event)")


def model_names(count: int) -> list[str]:
    """``count`` distinct model names in the forms users write (hub id, local path, bare name)."""
    names = []
    orgs = ("Qwen", "meta-llama", "mistralai", "google", "microsoft", "deepseek-ai", "allenai")
    for i in range(count):
        org = orgs[i % len(orgs)]
        size = (0.5, 1.5, 3, 7, 8, 14, 32)[i % 7]
        if i % 5 == 3:
            names.append(f"/data/huggingface_models/{org}-Model{i}-{size}B/snapshots/a{i:04x}")
        elif i % 5 == 4:
            names.append(f"local-model-{i}-{size}b")
        else:
            names.append(f"{org}/Model{i}-{size}B-Instruct")
    return names


def _job_events(workload: Workload, index: int, budget: int, model: str,
                rng: random.Random) -> Iterator[dict[str, Any]]:
    """The ``budget`` events of one job, in the order its trainer writes them (no ``ts``)."""
    job_id = f"job-{index:06d}"
    uid = f"{rng.getrandbits(48):012x}" if index % 2 == 0 else None
    counter = 0

    def stamp(event: dict[str, Any]) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        event["job_id"] = job_id
        event["model_name"] = model
        if uid is not None:
            event["event_id"] = f"{uid}:{counter}"
        return event

    epochs = rng.randint(1, 5)
    finishes = budget >= 3
    slots = budget - 1 - finishes  # metrics and checkpoints
    logs = max(1, math.ceil(slots * EVAL_EVERY * CKPT_EVERY_EVALS
                            / (EVAL_EVERY * CKPT_EVERY_EVALS + 1)))
    steps_per_epoch = max(1, math.ceil(logs * STEPS_PER_LOG / epochs))
    floor = 0.3 + 0.9 * rng.random()  # how low this run's loss goes
    start = floor + 1.5 + rng.random()
    phase = rng.randrange(EVAL_EVERY)  # jobs evaluate at different moments
    yield stamp({
        "type": "job_started", "total_epochs": epochs, "name": f"{job_id} lr sweep",
        "config": {"learning_rate": rng.choice((5e-5, 1e-4, 2e-4, 3e-4)),
                   "lora_r": rng.choice((8, 16, 32, 64)), "batch_size": 32,
                   "seed": index, "warmup_ratio": 0.03},
        "gpu_count": rng.choice((1, 2, 4, 8)),
    })
    step = evals = 0
    loss = start
    while slots > 0:
        step += STEPS_PER_LOG
        progress = min(1.0, step / (logs * STEPS_PER_LOG))
        loss = floor + (start - floor) * math.exp(-4 * progress) * (1 + 0.05 * rng.gauss(0, 1))
        epoch = round(step / steps_per_epoch, 4)
        metrics: dict[str, Any] = {"type": "metrics", "epoch": epoch, "step": step,
                                   "loss": round(loss, 6)}
        evaluate = (step // STEPS_PER_LOG + phase) % EVAL_EVERY == 0
        if evaluate:
            eval_loss = floor * 1.08 + (start - floor) * math.exp(-3.5 * progress)
            metrics["eval_loss"] = round(eval_loss * (1 + 0.02 * rng.gauss(0, 1)), 6)
        yield stamp(metrics)
        slots -= 1
        if evaluate:
            evals += 1
            if evals % CKPT_EVERY_EVALS == 0 and slots > 0:
                yield stamp({"type": "checkpoint", "path": f"/ckpt/{job_id}/checkpoint-{step}",
                             "epoch": epoch, "step": step})
                slots -= 1
    if finishes:
        fate = rng.random()
        if fate < 0.9:
            yield stamp({"type": "job_finished", "status": "completed",
                         "final_loss": round(loss, 6)})
        elif fate < 0.97:
            yield stamp({"type": "job_finished", "status": "failed",
                         "error": "torch.OutOfMemoryError: CUDA out of memory. "
                                  "Tried to allocate 2.00 GiB"})
        else:
            yield stamp({"type": "job_finished", "status": "cancelled"})


def generate(workload: Workload) -> Iterator[dict[str, Any]]:
    """Every event of ``workload`` in stream order, each with ``ts``."""
    rng = random.Random(workload.seed)
    models = model_names(workload.models)
    base, extra = divmod(workload.events, workload.jobs)

    def job(index: int) -> Iterator[dict[str, Any]]:
        job_rng = random.Random(f"{workload.seed}:{index}")
        budget = base + (index < extra)
        return _job_events(workload, index, budget, models[index % len(models)], job_rng)

    next_job = min(workload.concurrency, workload.jobs)
    active = [job(i) for i in range(next_job)]
    emitted = 0
    while active:
        slot = rng.randrange(len(active))
        event = next(active[slot], None)
        if event is None:  # that job is done: the next one starts in its place
            if next_job < workload.jobs:
                active[slot] = job(next_job)
                next_job += 1
            else:
                active[slot] = active[-1]
                active.pop()
            continue
        event["ts"] = round(workload.start_ts + emitted * TS_STEP, 3)
        emitted += 1
        yield event


def mix(events: list[dict[str, Any]]) -> Counter[str]:
    """How many events of each type (for the report)."""
    return Counter(event["type"] for event in events)
