"""A Hugging Face ``Trainer`` run reporting to the monitor with one callback.

A tiny GPT-2 (randomly initialised from a config: nothing is downloaded) learns generated
sentences on the CPU in well under a minute, evaluating and saving a checkpoint each epoch.
Run it while ``monitor up`` runs (it uses ``MONITOR_REDIS_URL``, which ``monitor up`` prints):

    MONITOR_REDIS_URL=redis://127.0.0.1:PORT/0 python examples/hf_trainer.py --lr 5e-3
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from monitor.integrations.transformers import MonitorCallback

SUBJECTS = ["the model", "a small run", "the trainer", "our checkpoint", "the eval loss"]
VERBS = ["improves", "converges", "overfits", "falls", "plateaus"]
ENDINGS = ["after warmup", "by epoch three", "on the held out set", "with a lower rate", "again"]
WORDS = sorted({w for phrase in SUBJECTS + VERBS + ENDINGS for w in phrase.split()} | {"."})
ID = {word: i for i, word in enumerate(WORDS)}


class Sentences(torch.utils.data.Dataset):  # type: ignore[misc]
    """Generated text, as token ids of a word-level vocabulary, 4 sentences per row."""

    def __init__(self, rows: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rows = []
        for _ in range(rows):
            words: list[str] = []
            for _ in range(4):
                words += f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(ENDINGS)} .".split()
            ids = torch.tensor([ID[w] for w in words[:32]] + [ID["."]] * (32 - len(words[:32])))
            self.rows.append({"input_ids": ids, "labels": ids})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="hf-example-"))
    # Saved and loaded back as people keep local models, so the run is grouped by that name.
    model_dir = out / "huggingface_models" / "Tiny-gpt2-sentences"
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=64, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir)

    training = TrainingArguments(
        output_dir=str(out / "run"), run_name=f"tiny-gpt2 lr={args.lr:g}",
        num_train_epochs=args.epochs, learning_rate=args.lr, per_device_train_batch_size=16,
        per_device_eval_batch_size=16, eval_strategy="epoch", save_strategy="epoch",
        logging_steps=4, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=Sentences(256, 1),
                      eval_dataset=Sentences(64, 2), callbacks=[MonitorCallback()])
    trainer.train()
    print(f"done; checkpoints in {training.output_dir}")


if __name__ == "__main__":
    main()
