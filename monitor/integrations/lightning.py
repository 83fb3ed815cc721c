"""A PyTorch Lightning callback that reports the run to the monitor, and stops it on request.

    from monitor.integrations.lightning import MonitorCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[MonitorCallback()])

It sends ``job_started`` when training begins (model name, epochs, the planned steps, the
module's hyperparameters, GPU count), ``metrics`` for the training loss of every
``log_every`` steps and for each validation's ``val_loss`` (the metric named by
``eval_metric``), ``checkpoint`` for every file a ``ModelCheckpoint`` saves, and
``job_finished`` at the end (``failed`` with the error when training raises). Asked to stop
(from the page, the API or auto-stop; docs/stopping.md) it sets ``trainer.should_stop``, so
Lightning ends training at the next step the way ``EarlyStopping`` does, and ends the job as
``stopped``. Only the global-zero process reports. Needs the ``[lightning]`` extra.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
import orjson
from lightning.pytorch.callbacks import ModelCheckpoint

from monitor.limits import MAX_CONFIG_BYTES
from monitor.sdk import Run, start_run

__all__ = ["MonitorCallback"]


class MonitorCallback(pl.Callback):
    """Report a Lightning ``Trainer``'s run. Every argument is optional: the model name
    defaults to the module's ``hparams.model_name`` (else its class name), the Redis to
    ``MONITOR_REDIS_URL``."""

    def __init__(self, *, model_name: str | None = None, job_id: str | None = None,
                 name: str | None = None, eval_metric: str = "val_loss",
                 train_metric: str = "train_loss", log_every: int = 10,
                 autostop: bool | None = None, redis_url: str | None = None,
                 prefix: str | None = None) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.model_name = model_name
        self.job_id = job_id
        self.name = name
        self.eval_metric = eval_metric
        self.train_metric = train_metric
        self.log_every = log_every
        self.autostop = autostop
        self.redis_url = redis_url
        self.prefix = prefix
        self.run: Run | None = None
        self._reported: set[str] = set()  # checkpoint files already sent
        self._saved_at: tuple[float, int] | None = None  # (epoch, step) of the last save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.run is not None:
            return
        hparams = dict(pl_module.hparams) if pl_module.hparams else {}
        model_name = self.model_name or hparams.get("model_name") or type(pl_module).__name__
        steps = trainer.estimated_stepping_batches
        self.run = start_run(
            str(model_name), job_id=self.job_id, name=self.name,
            total_epochs=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0
            else None,
            total_steps=int(steps) if isinstance(steps, int | float) and math.isfinite(steps)
            and steps > 0 else None,
            config=_jsonable(hparams) if hparams else None,
            gpu_count=_gpu_count(trainer),
            autostop=self.autostop, redis_url=self.redis_url, prefix=self.prefix,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.run is None:
            return
        self._report_checkpoints(trainer)
        step = trainer.global_step
        if step % self.log_every == 0:
            loss = _number(trainer.callback_metrics.get(self.train_metric))
            if loss is None:
                loss = _number(outputs.get("loss") if isinstance(outputs, dict) else outputs)
            if loss is not None:
                self.run.log(epoch=self._epoch(trainer, batch_idx), step=step, loss=loss)
        if self.run.should_stop:
            trainer.should_stop = True  # Lightning ends training at the next step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is None or trainer.sanity_checking:
            return
        eval_loss = _number(trainer.callback_metrics.get(self.eval_metric))
        if eval_loss is not None:
            self.run.log(epoch=trainer.current_epoch + 1, step=trainer.global_step,
                         eval_loss=eval_loss)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._saved_at = (float(trainer.current_epoch + 1), trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, "stopped" if self.run and self.run.should_stop else "completed")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self.run is None:
            return
        if isinstance(exception, KeyboardInterrupt):
            self._finish(trainer, "cancelled")
            return
        text = str(exception)
        self.run.finish("failed", error=f"{type(exception).__name__}: {text}" if text
                        else type(exception).__name__)
        self.run.close()
        self.run = None

    def _finish(self, trainer: pl.Trainer, status: Any) -> None:
        if self.run is None:
            return
        self._report_checkpoints(trainer)
        self.run.finish(status)
        self.run.close()
        self.run = None

    def _report_checkpoints(self, trainer: pl.Trainer) -> None:
        """Send the files ModelCheckpoint saved since the last look (it saves after the other
        callbacks' hooks, so a file shows up at the next one)."""
        assert self.run is not None
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            paths = {*callback.best_k_models, callback.last_model_path} - {""}
            for path in sorted(p for p in paths if p not in self._reported and os.path.exists(p)):
                self._reported.add(path)
                epoch, step = self._saved_at or (None, None)
                self.run.checkpoint(path, epoch=epoch, step=step,
                                    eval_loss=_number(callback.best_k_models.get(path))
                                    if callback.monitor == self.eval_metric else None)

    @staticmethod
    def _epoch(trainer: pl.Trainer, batch_idx: int) -> float:
        per_epoch = trainer.num_training_batches
        if isinstance(per_epoch, int) and per_epoch > 0:
            return round(trainer.current_epoch + (batch_idx + 1) / per_epoch, 4)
        return float(trainer.current_epoch)


def _number(value: Any) -> float | None:
    """A float from a number or a one-element tensor; None for anything else or non-finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def _gpu_count(trainer: pl.Trainer) -> int:
    accelerator = type(trainer.accelerator).__name__.lower()
    return int(trainer.num_devices) if "cuda" in accelerator or "gpu" in accelerator else 0


def _jsonable(hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The hyperparameters as JSON (what JSON cannot carry, as its text), or None when they
    are over the config limit."""
    data = orjson.dumps(hparams, default=str, option=orjson.OPT_NON_STR_KEYS
                        | orjson.OPT_SERIALIZE_NUMPY)
    if len(data) > MAX_CONFIG_BYTES:
        return None
    config: dict[str, Any] = orjson.loads(data)
    return config
