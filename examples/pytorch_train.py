"""A plain PyTorch training loop reporting to the monitor through ``monitor.sdk``.

A small MLP learns y = sin(3x) + x/2 from noisy synthetic data on the CPU in seconds. Run it
while ``monitor up`` runs (it uses ``MONITOR_REDIS_URL``, which ``monitor up`` prints):

    MONITOR_REDIS_URL=redis://127.0.0.1:PORT/0 python examples/pytorch_train.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from monitor.sdk import start_run


def data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 1, generator=generator) * 4 - 2
    y = torch.sin(3 * x) + x / 2 + torch.randn(count, 1, generator=generator) * 0.05
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--job-id", default=None, help="default: a new id per run")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: temp)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_x, train_y = data(2048, seed=1)
    eval_x, eval_y = data(256, seed=2)
    out = args.out or Path(tempfile.mkdtemp(prefix="pytorch-example-"))
    batch, step = 64, 0
    config = {"lr": args.lr, "batch_size": batch, "hidden": 64, "optimizer": "adam"}
    with start_run("examples/sin-mlp", job_id=args.job_id, total_epochs=args.epochs,
                   name=f"mlp lr={args.lr:g}", config=config, gpu_count=0) as run:
        for epoch in range(1, args.epochs + 1):
            order = torch.randperm(len(train_x))
            for i in range(0, len(order), batch):
                picked = order[i : i + batch]
                loss = nn.functional.mse_loss(model(train_x[picked]), train_y[picked])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % 8 == 0:
                    run.log(epoch=epoch - 1 + i / len(order), step=step, loss=loss.item())
            with torch.no_grad():
                eval_loss = nn.functional.mse_loss(model(eval_x), eval_y).item()
            folder = out / f"checkpoint-{step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), folder / "model.pt")
            run.log(epoch=epoch, step=step, eval_loss=eval_loss)
            run.checkpoint(str(folder), epoch=epoch, step=step)
            print(f"epoch {epoch}: eval loss {eval_loss:.4f} ({folder})")


if __name__ == "__main__":
    main()
