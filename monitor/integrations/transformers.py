"""A Hugging Face ``Trainer`` callback that reports the run to the monitor.

    from monitor.integrations.transformers import MonitorCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[MonitorCallback()])

It sends ``job_started`` when training begins (model name from the model's config, epochs,
the training arguments, GPU count), ``metrics`` for every log (its loss and eval loss, and
its other numbers, such as the learning rate, as ``extra``),
``checkpoint`` for every saved ``checkpoint-N`` folder, and ``job_finished`` at the end. A
training that raises ends as ``failed`` with the error (when the script exits, or at once
through :meth:`MonitorCallback.fail`). Asked to stop (from the page, the API or auto-stop;
docs/stopping.md), it ends training at the next step (the Trainer saves what its save
strategy says) and the job as ``stopped``. Only the main process of a distributed run
reports. Needs the ``[transformers]`` extra.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import re
import sys
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from monitor.limits import MAX_EXTRA, MAX_METRIC_NAME
from monitor.sdk import Run, start_run

NOT_EXTRA = ("loss", "eval_loss", "epoch", "step")  # sent as themselves

__all__ = ["MonitorCallback", "stable_job_id"]


def stable_job_id(output_dir: str, run_name: str | None) -> str:
    """The same id for the same output folder and run name, so a resumed training continues
    its job: ``hf-<folder>-<hash>``."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(os.path.abspath(output_dir)))
    digest = hashlib.sha1(f"{os.path.abspath(output_dir)}|{run_name or ''}".encode()).hexdigest()
    return f"hf-{folder.strip('-')[:80] or 'run'}-{digest[:10]}"


class MonitorCallback(TrainerCallback):
    """Report a ``Trainer``'s run. Every argument is optional: the model name comes from the
    model's ``config._name_or_path``, the job id from ``output_dir`` and the run name, the
    Redis from ``MONITOR_REDIS_URL``."""

    def __init__(self, *, model_name: str | None = None, job_id: str | None = None,
                 name: str | None = None, autostop: bool | None = None,
                 redis_url: str | None = None, prefix: str | None = None) -> None:
        self.model_name = model_name
        self.job_id = job_id
        self.name = name
        self.autostop = autostop
        self.redis_url = redis_url
        self.prefix = prefix
        self.run: Run | None = None
        self._sent_eval: tuple[int, float] | None = None
        atexit.register(self._at_exit)

    # Training side.

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.run is not None:
            return
        config = getattr(model, "config", None)
        model_name = self.model_name or getattr(config, "_name_or_path", None) or None
        self.run = start_run(
            model_name,
            job_id=self.job_id or stable_job_id(args.output_dir or ".", args.run_name),
            total_epochs=max(1, math.ceil(state.num_train_epochs or args.num_train_epochs)),
            name=self.name or args.run_name,
            config=json.loads(args.to_json_string()),  # type: ignore[no-untyped-call]
            gpu_count=_gpu_count(args),
            total_steps=state.max_steps if state.max_steps and state.max_steps > 0 else None,
            autostop=self.autostop,
            redis_url=self.redis_url,
            prefix=self.prefix,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if self.run is not None and self.run.should_stop:
            control.should_training_stop = True  # the Trainer ends after this step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.run is None or not logs:
            return
        loss, eval_loss = _number(logs.get("loss")), _number(logs.get("eval_loss"))
        extra = _others(logs)
        if loss is None and eval_loss is None and not extra:
            return
        self.run.log(epoch=logs.get("epoch", state.epoch), step=state.global_step, loss=loss,
                     eval_loss=eval_loss, extra=extra or None)
        if eval_loss is not None:
            self._sent_eval = (state.global_step, eval_loss)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        eval_loss = _number((metrics or {}).get("eval_loss"))
        if self.run is None or eval_loss is None:
            return
        if self._sent_eval != (state.global_step, eval_loss):  # not logged already
            self.run.log(epoch=state.epoch, step=state.global_step, eval_loss=eval_loss)
            self._sent_eval = (state.global_step, eval_loss)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if self.run is None:
            return
        folder = os.path.join(args.output_dir or ".",
                              f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        evaluated = self._sent_eval
        eval_loss = evaluated[1] if evaluated and evaluated[0] == state.global_step else None
        self.run.checkpoint(folder, epoch=state.epoch, step=state.global_step,
                            eval_loss=eval_loss)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if self.run is not None:
            if self.run.should_stop:
                self.run.finish("stopped")
            self.run.close()  # completed, unless stopped
            self.run = None

    # Failures.

    def fail(self, error: BaseException | str) -> None:
        """End the run as failed now, e.g. ``except Exception as e: callback.fail(e)``."""
        if self.run is None:
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.run.finish("failed", error=text or "training failed")
        self.run.close()
        self.run = None

    def _at_exit(self) -> None:
        """Training began but never ended: the script died of an exception (or was stopped)."""
        if self.run is None:
            return
        error = getattr(sys, "last_value", None)
        if isinstance(error, KeyboardInterrupt):
            self.run.finish("cancelled")
            self.run.close()
            self.run = None
        else:
            self.fail(error if error is not None else "training stopped before it ended")


def _others(logs: dict[str, Any]) -> dict[str, float]:
    """The numbers the Trainer logged besides the losses and where it is (learning rate,
    gradient norm, eval accuracy, its end-of-training summary...): a metrics event's
    ``extra``, kept in the job's metric history."""
    out: dict[str, float] = {}
    for name, value in sorted(logs.items()):
        number = _number(value)
        if (number is not None and math.isfinite(number) and name not in NOT_EXTRA
                and len(name) <= MAX_METRIC_NAME and len(out) < MAX_EXTRA):
            out[name] = number
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _gpu_count(args: TrainingArguments) -> int:
    try:
        return max(0, int(args.n_gpu))
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return 0
