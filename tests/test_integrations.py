"""The Hugging Face callback on a real (tiny, CPU) ``Trainer`` run, and the PyTorch example,
through real Redis and the real worker."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.records import public_state
from tests.gateway_helpers import RunningWorker, stop_mid_run

if os.environ.get("REQUIRE_TRANSFORMERS"):  # .ci/run: these must run, not skip
    import torch
    import transformers
else:
    torch = pytest.importorskip("torch", reason="pip install torch==2.13.0 '.[transformers]'")
    transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 40


def tiny_model(directory: Path) -> Any:
    """A randomly initialised 2-layer GPT-2, saved where people keep their models and loaded
    back from there (so its config names it as such). No download."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2,
                                     n_head=2)
    torch.manual_seed(0)
    path = directory / "huggingface_models" / "Tiny-gpt2-test"
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return transformers.GPT2LMHeadModel.from_pretrained(path), str(path)


class Text(torch.utils.data.Dataset):  # type: ignore[misc]
    """Generated 'sentences': a repeating pattern with noise, which a model can learn."""

    def __init__(self, count: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rows = []
        for _ in range(count):
            start = rng.randrange(VOCAB)
            ids = [(start + i * 3 + (rng.random() < 0.1)) % VOCAB for i in range(24)]
            self.rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class Boom(RuntimeError):
    pass


def trainer_for(tmp_path: Path, callbacks: list[Any]) -> Any:
    model, _ = tiny_model(tmp_path)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, eval_strategy="epoch", save_strategy="epoch",
        logging_steps=2, learning_rate=5e-3, report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, run_name="tiny-lr5e-3")
    return transformers.Trainer(model=model, args=args, train_dataset=Text(64, 1),
                                eval_dataset=Text(16, 2), callbacks=callbacks)


def test_a_real_trainer_run_reports_everything(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    from monitor.integrations.transformers import MonitorCallback, stable_job_id

    callback = MonitorCallback(redis_url=redis_url, prefix=keys.prefix)
    trainer = trainer_for(tmp_path, [callback])
    trainer.train()
    worker.wait_applied()

    job_id = stable_job_id(str(tmp_path / "out"), "tiny-lr5e-3")
    job = public_state(r.hget(keys.jobs, job_id))
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    best = min(evals, key=lambda h: h["eval_loss"])
    assert job["model_name"] == str(tmp_path / "huggingface_models" / "Tiny-gpt2-test")
    assert job["model_display"] == "Tiny/gpt2-test"
    assert job["total_epochs"] == 2
    assert job["total_steps"] == trainer.state.max_steps > 0  # the Trainer's horizon
    assert job["status"] == "completed"
    assert job["name"] == "tiny-lr5e-3"
    assert job["best_eval_loss"] == pytest.approx(best["eval_loss"])
    assert job["best_step"] == best["step"]
    folder = Path(job["best_checkpoint_path"])
    assert folder.name == f"checkpoint-{best['step']}" and folder.is_dir()
    config = orjson.loads(r.hget(keys.configs, job_id))
    assert (config["num_train_epochs"], config["learning_rate"]) == (2, 5e-3)

    points = [orjson.loads(p) for p in r.lrange(keys.metrics(job_id), 0, -1)]
    # every log: its losses, and its other numbers (learning rate, grad norm, eval runtime,
    # the end-of-training summary) as extra
    logged = [(h["step"], h.get("loss"), h.get("eval_loss"),
               {k: v for k, v in h.items() if k not in ("step", "epoch", "loss", "eval_loss")})
              for h in history]
    assert [(p["step"], p["loss"], p["eval_loss"], p.get("extra", {})) for p in points] == [
        (step, pytest.approx(loss) if loss is not None else None,
         pytest.approx(ev) if ev is not None else None, pytest.approx(others))
        for step, loss, ev, others in logged]
    assert len(evals) == 2 and len([p for p in points if p["eval_loss"] is not None]) == 2
    assert "learning_rate" in points[0]["extra"] and "train_runtime" in points[-1]["extra"]


def test_a_trainer_stopped_from_the_api_mid_run_ends_early_as_stopped(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    from monitor.integrations.transformers import MonitorCallback

    callback = MonitorCallback(redis_url=redis_url, prefix=keys.prefix, job_id="long")
    trainer = trainer_for(tmp_path, [callback])
    trainer.args.max_steps = 5000  # far more than it will run
    trainer.args.save_strategy = "steps"
    trainer.args.save_steps = 1000
    stop_mid_run(redis_url, keys, "long", trainer.train, after_step=6, reason="enough of this")
    worker.wait_applied()
    job = public_state(r.hget(keys.jobs, "long"))
    assert job["status"] == "stopped"
    assert job["stop_requested"]["reason"] == "enough of this"
    assert 6 <= trainer.state.global_step < 500  # ended early, at a step
    assert job["step"] <= trainer.state.global_step


def test_a_training_that_raises_ends_as_failed_with_the_error(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    from monitor.integrations.transformers import MonitorCallback

    class Explode(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 3:  # mid-epoch
                raise Boom("loss went NaN at step 3")

    callback = MonitorCallback(redis_url=redis_url, prefix=keys.prefix, job_id="explodes")
    trainer = trainer_for(tmp_path, [callback, Explode()])
    with pytest.raises(Boom):
        try:
            trainer.train()
        except Boom as e:
            callback.fail(e)
            raise
    worker.wait_applied()
    job = public_state(r.hget(keys.jobs, "explodes"))
    assert (job["status"], job["error"]) == ("failed", "Boom: loss went NaN at step 3")


def test_a_training_script_that_dies_ends_as_failed(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import transformers
        from pathlib import Path
        from monitor.integrations.transformers import MonitorCallback
        from tests.test_integrations import Boom, trainer_for

        class Explode(transformers.TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 3:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        callback = MonitorCallback(job_id="dies")
        trainer_for(Path({str(tmp_path)!r}), [callback, Explode()]).train()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(MONITOR_REDIS_URL=redis_url, MONITOR_PREFIX=keys.prefix)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=240, check=False)
    assert done.returncode == 1 and "RuntimeError: CUDA out of memory" in done.stderr
    worker.wait_applied()
    job = public_state(r.hget(keys.jobs, "dies"))
    assert (job["status"], job["error"]) == (
        "failed", "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")


def test_the_pytorch_example_learns_and_its_losses_arrive_in_order(
        redis_url: str, keys: Keys, r: redis.Redis, worker: RunningWorker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(MONITOR_REDIS_URL=redis_url, MONITOR_PREFIX=keys.prefix)
    subprocess.run([sys.executable, str(ROOT / "examples" / "pytorch_train.py"), "--epochs",
                    "3", "--job-id", "torch-example"], env=env, check=True, timeout=120,
                   capture_output=True)
    worker.wait_applied()
    job = public_state(r.hget(keys.jobs, "torch-example"))
    points = [orjson.loads(p) for p in r.lrange(keys.metrics("torch-example"), 0, -1)]
    steps = [p["step"] for p in points]
    assert steps == sorted(steps)  # in training order
    losses = [p["loss"] for p in points if p["loss"] is not None]
    assert losses[-1] < losses[0] / 2  # it really learns
    evals = [p["eval_loss"] for p in points if p["eval_loss"] is not None]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert (job["status"], job["total_epochs"]) == ("completed", 3)
    best = min((p for p in points if p["eval_loss"] is not None), key=lambda p: p["eval_loss"])
    assert Path(job["best_checkpoint_path"]).name == f"checkpoint-{best['step']}"
