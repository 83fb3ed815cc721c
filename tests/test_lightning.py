"""The PyTorch Lightning callback on real (tiny, CPU) training through real Redis and the real
worker: what it reports, and a run stopped from the API mid-training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from monitor.keys import Keys
from monitor.records import public_state
from tests.gateway_helpers import RunningWorker, stop_mid_run

if os.environ.get("REQUIRE_LIGHTNING"):  # .ci/run: these must run, not skip
    import lightning.pytorch as pl
    import torch
else:
    torch = pytest.importorskip("torch", reason="pip install torch==2.13.0 '.[lightning]'")
    pl = pytest.importorskip("lightning.pytorch", reason="pip install '.[lightning]'")

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(300),
    # Lightning's own code, on this torch: not ours to fix.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"
                               ":FutureWarning"),
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
]


class Regression(pl.LightningModule):  # type: ignore[misc]
    """y = 3x - 1 plus noise, learned by one linear layer."""

    def __init__(self, learning_rate: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


def loader(n: int, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator)
    y = 3 * x - 1 + 0.05 * torch.randn(n, 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer_for(tmp_path: Path, callback: Any, epochs: int) -> Any:
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss",
                                               save_top_k=1)
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[callback, checkpoints], default_root_dir=tmp_path)


def test_a_lightning_run_reports_losses_checkpoints_and_its_horizon(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    from monitor.integrations.lightning import MonitorCallback

    callback = MonitorCallback(model_name="org/regression", job_id="lit", log_every=4,
                               redis_url=redis_url, prefix=keys.prefix)
    trainer = trainer_for(tmp_path, callback, epochs=4)
    trainer.fit(Regression(), loader(128, 1), loader(32, 2))  # 16 steps an epoch
    worker.wait_applied()

    job = public_state(r.hget(keys.jobs, "lit"))
    assert (job["status"], job["model_name"], job["total_epochs"], job["total_steps"]) == (
        "completed", "org/regression", 4, 64)
    assert job["gpu_count"] == 0
    assert orjson.loads(r.hget(keys.configs, "lit")) == {"learning_rate": 0.05, "seed": 0}
    points = [orjson.loads(p) for p in r.lrange(keys.metrics("lit"), 0, -1)]
    evals = [p for p in points if p["eval_loss"] is not None]
    assert [p["step"] for p in evals] == [16, 32, 48, 64]
    assert [p["step"] for p in points if p["loss"] is not None] == list(range(4, 65, 4))
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # it learns
    best = min(evals, key=lambda p: p["eval_loss"])
    saved = Path(job["best_checkpoint_path"])
    assert saved.suffix == ".ckpt" and saved.exists()
    assert job["best_step"] == best["step"]


def test_a_lightning_run_stopped_from_the_api_ends_early_as_stopped(
        tmp_path: Path, redis_url: str, keys: Keys, r: redis.Redis,
        worker: RunningWorker) -> None:
    from monitor.integrations.lightning import MonitorCallback

    callback = MonitorCallback(model_name="org/regression", job_id="lit-long", log_every=1,
                               redis_url=redis_url, prefix=keys.prefix)
    trainer = trainer_for(tmp_path, callback, epochs=2000)
    stop_mid_run(redis_url, keys, "lit-long",
                 lambda: trainer.fit(Regression(), loader(128, 1), loader(32, 2)), after_step=20)
    worker.wait_applied()
    job = public_state(r.hget(keys.jobs, "lit-long"))
    assert (job["status"], job["stop_requested"]["by"]) == ("stopped", "user")
    assert 20 <= trainer.global_step < 2000 * 16 // 10  # ended early
    assert trainer.should_stop
