"""Simulated trainers (``monitor demo``): realistic fine-tuning runs, written through the SDK."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from monitor.sdk import start_run

logger = logging.getLogger("monitor.demo")

Fate = Literal["completed", "failed", "cancelled"]

# (model name as users write it, the best eval loss a good run of it reaches)
MODELS: tuple[tuple[str, float], ...] = (
    ("Qwen/Qwen2.5-7B-Instruct", 0.52),
    ("/data/huggingface_models/Qwen-Qwen3-1.7B/snapshots/9a2c1f", 0.81),
    ("meta-llama/Llama-3.2-3B-Instruct", 0.67),
    ("mistralai/Mistral-7B-Instruct-v0.3", 0.58),
)
# How much worse than the model's best a run ends: within 5 %, 10-25 %, far worse (the tiers).
QUALITY_TIERS: tuple[tuple[float, float], ...] = ((1.005, 1.035), (1.13, 1.21), (1.35, 1.7))
LEARNING_RATES = (5e-5, 1e-4, 2e-4, 3e-4)
LORA_RANKS = (8, 16, 32, 64)


@dataclass(frozen=True)
class DemoOptions:
    redis_url: str
    prefix: str = "monitor:"
    runs_per_model: int = 3
    epochs: int = 5
    steps_per_epoch: int = 20
    step_seconds: float = 0.2  # wall time per training step; 0 = as fast as possible
    seed: int | None = None
    loop: bool = False  # start new runs forever (for a live demo) instead of stopping

    def __post_init__(self) -> None:
        for field in ("runs_per_model", "epochs", "steps_per_epoch"):
            if getattr(self, field) < 1:
                raise ValueError(f"demo {field} must be >= 1, got {getattr(self, field)}")
        if self.runs_per_model > len(LEARNING_RATES) * len(LORA_RANKS):
            raise ValueError(f"demo runs_per_model must be at most "
                             f"{len(LEARNING_RATES) * len(LORA_RANKS)}, got {self.runs_per_model}")
        if not self.step_seconds >= 0:
            raise ValueError(f"demo step_seconds must be >= 0, got {self.step_seconds}")


@dataclass(frozen=True)
class CurveSpec:
    """The shape of one run's losses."""

    start: float  # training loss before the first step
    best_eval: float  # the lowest eval loss of the run, before noise
    decay: float  # e-foldings of (loss - floor) over the whole run
    gap: float  # eval loss above training loss, relative
    overfit: float  # 0: none; about 1: eval loss climbs again in the last half
    noise: float  # relative per-step noise of training loss


@dataclass(frozen=True)
class Curve:
    loss: tuple[float, ...]  # training loss at global steps 1..n
    eval_loss: tuple[float, ...]  # eval loss at the end of epochs 1..e


def loss_curve(spec: CurveSpec, epochs: int, steps_per_epoch: int, seed: int) -> Curve:
    """Noisy exponential decay of training loss, and eval loss once per epoch (pure)."""
    rng = random.Random(seed)
    total = epochs * steps_per_epoch

    def rise(t: float) -> float:  # memorising: eval climbs late while training keeps falling
        return spec.overfit * max(0.0, t - 0.5) ** 2

    # The floor is chosen so that the lowest eval loss over the epochs is exactly best_eval:
    # each epoch's eval is increasing in the floor, so the answer is the largest per-epoch one.
    floor = max(
        (spec.best_eval / (1 + spec.gap + rise(t)) - spec.start * math.exp(-spec.decay * t))
        / (1 - math.exp(-spec.decay * t))
        for t in (epoch / epochs for epoch in range(1, epochs + 1))
    )

    def mean(t: float) -> float:
        return floor + (spec.start - floor) * math.exp(-spec.decay * t)

    loss = tuple(
        round(max(mean(t) * (1 - rise(t) / 2) * (1 + rng.gauss(0, spec.noise)), 0.01), 4)
        for t in (step / total for step in range(1, total + 1))
    )
    eval_loss = tuple(
        round(mean(t) * (1 + spec.gap + rise(t)) * (1 + rng.gauss(0, spec.noise / 5)), 4)
        for t in (epoch / epochs for epoch in range(1, epochs + 1))
    )
    return Curve(loss, eval_loss)


@dataclass(frozen=True)
class RunPlan:
    """Everything about one simulated run, decided up front from the seed."""

    model_name: str
    name: str
    config: dict[str, Any]
    gpu_count: int
    curve: CurveSpec
    seed: int
    fate: Fate
    end_step: int  # a failed or cancelled run stops before this global step
    error: str = ""


class OutOfMemoryError(RuntimeError):
    """What ``torch.OutOfMemoryError`` is called; raised inside a run to simulate a crash."""


def plan_runs(options: DemoOptions, rng: random.Random) -> list[RunPlan]:
    """One round of runs (every model, ``runs_per_model`` each), shuffled into a start order."""
    total = options.epochs * options.steps_per_epoch
    plans: list[RunPlan] = []
    not_best: list[int] = []  # indexes of the runs planned to end worse than their model's best
    for m, (model_name, best) in enumerate(MODELS):
        combos = rng.sample(list(itertools.product(LEARNING_RATES, LORA_RANKS)),
                            options.runs_per_model)
        if len(combos) >= 3:  # the last run repeats the best's configuration with another seed
            combos[-1] = combos[0]
        config_of_best: dict[str, Any] = {}
        for i, (lr, rank) in enumerate(combos):
            replicate = i > 0 and i == len(combos) - 1 and combos[i] == combos[0]
            if i == 0:
                quality = 1.0
            elif replicate:
                quality = rng.uniform(1.0, 1.03)  # seed noise
            else:
                quality = rng.uniform(*QUALITY_TIERS[(m + i - 1) % 3])
            if i > 0:
                not_best.append(len(plans))
            gap = rng.uniform(0.03, 0.1)
            curve = CurveSpec(
                start=rng.uniform(2.0, 3.0), best_eval=best * quality,
                decay=rng.uniform(4.0, 7.0), gap=gap, noise=rng.uniform(0.03, 0.06),
                overfit=rng.uniform(0.9, 1.6) if rng.random() < 0.35 else 0.0,
            )
            config = {
                "learning_rate": lr, "lora_r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.05,
                "per_device_train_batch_size": rng.choice((2, 4, 8)),
                "gradient_accumulation_steps": rng.choice((1, 2, 4)),
                "warmup_ratio": rng.choice((0.0, 0.03, 0.1)), "lr_scheduler_type": "cosine",
                "num_train_epochs": options.epochs, "max_seq_length": 2048,
            }
            if replicate:
                config = dict(config_of_best)
            elif i == 0:
                config_of_best = config
            config = {**config, "seed": rng.randrange(10_000)}
            plans.append(RunPlan(
                model_name=model_name, name=f"lr={lr:.0e} r={rank}".replace("e-0", "e-"),
                config=config, gpu_count=rng.choice((1, 2, 4, 8)), curve=curve,
                seed=rng.getrandbits(32), fate="completed", end_step=total + 1,
            ))
    # Fates: one run crashes and one is cancelled (more crash now and then); never a model's best.
    candidates = not_best if len(not_best) >= 2 else list(range(len(plans)))
    failed, cancelled = rng.sample(candidates, 2)
    extra = [i for i in candidates if i not in (failed, cancelled) and rng.random() < 0.1]
    first_stop = min(options.steps_per_epoch + 1, total)  # after the first checkpoint if possible
    for i in [failed, *extra]:
        gib = rng.choice(("1.50", "2.00", "3.25"))
        plans[i] = replace(plans[i], fate="failed", end_step=rng.randint(first_stop, total),
                           error=f"CUDA out of memory. Tried to allocate {gib} GiB. GPU 0 has a "
                           f"total capacity of 79.15 GiB of which 1.12 GiB is free.")
    plans[cancelled] = replace(plans[cancelled], fate="cancelled",
                               end_step=rng.randint(first_stop, total))
    rng.shuffle(plans)
    return plans


def run_demo(options: DemoOptions, stop: threading.Event | None = None) -> int:
    """Run simulated trainers until done (with ``loop``: until ``stop``); returns runs finished."""
    stop = stop if stop is not None else threading.Event()
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    finished = round_no = 0
    while True:
        plans = plan_runs(options, random.Random(f"{seed}:{round_no}"))
        finished += _run_round(plans, options, stop)
        if not options.loop or stop.is_set():
            return finished
        round_no += 1


def _run_round(plans: list[RunPlan], options: DemoOptions, stop: threading.Event) -> int:
    """Start the runs staggered (one every half epoch), each in its own thread; wait for all."""
    stagger = options.step_seconds * options.steps_per_epoch / 2
    with ThreadPoolExecutor(len(plans), thread_name_prefix="monitor-demo") as pool:
        runs = [pool.submit(_train, plan, options, stop, i * stagger)
                for i, plan in enumerate(plans)]
        try:
            return sum(run.result() for run in runs)
        except BaseException:
            stop.set()  # e.g. Ctrl-C here: end the runs (as cancelled) so the pool can shut down
            raise


def _train(plan: RunPlan, options: DemoOptions, stop: threading.Event, delay: float) -> bool:
    """One simulated trainer; returns whether it ran (and so sent job_finished)."""
    if stop.wait(delay):
        return False
    curve = loss_curve(plan.curve, options.epochs, options.steps_per_epoch, plan.seed)
    per_epoch = options.steps_per_epoch
    try:
        with start_run(plan.model_name, total_epochs=options.epochs, name=plan.name,
                       config=plan.config, gpu_count=plan.gpu_count,
                       total_steps=options.epochs * options.steps_per_epoch,
                       redis_url=options.redis_url, prefix=options.prefix) as run:
            for step, loss in enumerate(curve.loss, start=1):
                if run.should_stop:  # asked from the page, or by auto-stop
                    return True  # leaving the block ends the run as stopped
                if stop.is_set() or (plan.fate == "cancelled" and step == plan.end_step):
                    run.finish("cancelled")
                    return True
                if plan.fate == "failed" and step == plan.end_step:
                    raise OutOfMemoryError(plan.error)
                run.log(epoch=round(step / per_epoch, 4), step=step, loss=loss)
                if step % per_epoch == 0:
                    epoch = step // per_epoch
                    run.log(epoch=epoch, step=step, eval_loss=curve.eval_loss[epoch - 1])
                    run.checkpoint(f"checkpoint-{step}", epoch=epoch, step=step)
                if options.step_seconds:
                    stop.wait(options.step_seconds)
            run.finish(final_loss=curve.loss[-1], final_eval_loss=curve.eval_loss[-1])
    except OutOfMemoryError as e:  # the simulated crash; the SDK has sent job_finished: failed
        logger.info("demo run %s (%s) crashed: %s", plan.name, plan.model_name, e)
    return True
