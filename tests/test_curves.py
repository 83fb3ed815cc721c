"""The committed learning curves (``bench/data/curves.json``) and the command that makes them."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.curves import DEFAULT_OUT, Dataset, load_curves, to_document

ROOT = Path(__file__).resolve().parent.parent
DATASETS = load_curves(DEFAULT_OUT)


def test_the_committed_file_holds_four_real_datasets_and_says_what_made_it() -> None:
    assert [(d.name, d.task, d.metric) for d in DATASETS] == [
        ("digits", "classification", "log_loss"),
        ("breast_cancer", "classification", "log_loss"),
        ("wine", "classification", "log_loss"),
        ("diabetes", "regression", "mse"),
    ]
    assert DEFAULT_OUT.stat().st_size < 1_000_000
    assert b'"generated_by":"python -m bench.curves"' in DEFAULT_OUT.read_bytes()


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_every_dataset_has_a_grid_of_rates_each_config_with_three_seeds(dataset: Dataset) -> None:
    assert len(dataset.runs) >= 12
    assert len({r.run_id for r in dataset.runs}) == len(dataset.runs)
    assert len({r.config["learning_rate"] for r in dataset.runs}) >= 4
    seeds_per_config = Counter(
        tuple(sorted((k, v) for k, v in r.config.items() if k != "seed")) for r in dataset.runs)
    assert min(seeds_per_config.values()) >= 3


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_every_curve_runs_to_the_horizon_with_finite_positive_losses(dataset: Dataset) -> None:
    for run in dataset.runs:
        assert len(run.eval_loss) == len(run.loss) == dataset.epochs, run.run_id
        assert all(math.isfinite(v) and v > 0 for v in run.eval_loss + run.loss), run.run_id
        assert run.steps_per_epoch == math.ceil(dataset.train_size / run.config["batch_size"])


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_the_grid_spans_winners_and_losers(dataset: Dataset) -> None:
    bests = [r.best_eval_loss for r in dataset.runs]
    assert min(bests) <= 0.9 * max(bests)


def test_best_epoch_is_the_first_epoch_at_the_minimum() -> None:
    run = next(r for d in DATASETS for r in d.runs if r.best_epoch < d.epochs)
    assert run.eval_loss[run.best_epoch - 1] == run.best_eval_loss
    assert all(v > run.best_eval_loss for v in run.eval_loss[: run.best_epoch - 1])


def test_reading_and_writing_the_file_round_trips() -> None:
    assert to_document(DATASETS) == orjson.loads(DEFAULT_OUT.read_bytes())


def test_quick_generation_writes_a_file_of_the_same_shape(tmp_path: Path) -> None:
    out = tmp_path / "curves.json"
    done = subprocess.run([sys.executable, "-m", "bench.curves", "--quick", "--out", str(out)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| digits | log_loss | 3 | 2 |" in done.stdout
    quick = load_curves(out)
    assert [d.name for d in quick] == [d.name for d in DATASETS]
    for small, full in zip(quick, DATASETS, strict=True):
        assert (small.task, small.metric, small.train_size) == (full.task, full.metric,
                                                                 full.train_size)
        assert small.epochs == 3 and len(small.runs) == 2
        for run in small.runs:
            assert len(run.eval_loss) == len(run.loss) == 3
            assert run.config.keys() == full.runs[0].config.keys()
            assert all(math.isfinite(v) and v > 0 for v in run.eval_loss + run.loss)
    # The same seeds give the same curves: the quick runs are the full runs' first epochs
    # (up to the last rounded digit, should another machine's BLAS sum in another order).
    full_runs = {r.run_id: r for d in DATASETS for r in d.runs}
    for run in (r for d in quick for r in d.runs):
        assert run.eval_loss == pytest.approx(full_runs[run.run_id].eval_loss[:3], rel=1e-4)
