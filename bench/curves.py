"""Real learning curves for backtesting the forecast: ``python -m bench.curves [--quick]``.

Small multilayer perceptrons (scikit-learn's ``MLPClassifier`` / ``MLPRegressor``, one hidden
ReLU layer, SGD with Nesterov momentum 0.9, constant learning rate, batches of 32) trained on
the CPU on four real datasets that ship inside scikit-learn: ``digits`` (1,797 8x8 handwritten
digits, 10 classes), ``breast_cancer`` (569 tumours, 2 classes), ``wine`` (178 wines,
3 cultivars) and ``diabetes`` (442 patients, disease progression after a year; regression).
Each dataset has one fixed, stratified 70/30 train/validation split (``SPLIT_SEED``) and
standardized features (the regression target is standardized too), so that all its runs are
judged on the same validation set, as the runs of one model group are.

Per dataset a grid of 7 learning rates (good to far too large or far too small) times
2 hidden widths times 5 seeds (the seed sets the initial weights and the shuffling of the
batches): 70 runs, each for a fixed number of epochs (its horizon). After every epoch a run
records its validation loss (log loss, or the mean squared error for the regression) and its
training loss (the mean of its batch losses over that epoch, as a trainer would log it; it
includes the L2 penalty ``alpha = 1e-4``). Some runs lose from the start, some overfit (their
validation loss turns up again), some only catch up late. The same seeds give the same curves.

Generation takes about 70 s of CPU on one core (it holds itself to one thread);
``--quick`` (2 runs of 3 epochs per dataset) takes a second or two. The result is
``bench/data/curves.json`` (committed, about 300 KB; losses rounded to 5 significant
digits), read back with :func:`load_curves`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from bench.common import table

DEFAULT_OUT = Path(__file__).parent / "data" / "curves.json"
GENERATED_BY = "python -m bench.curves"
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.3
BATCH_SIZE = 32
MOMENTUM = 0.9
ALPHA = 1e-4  # scikit-learn's default L2 penalty
SEEDS = (0, 1, 2, 3, 4)
WIDTHS = (16, 64)
SIGNIFICANT_DIGITS = 5

Task = Literal["classification", "regression"]
Metric = Literal["log_loss", "mse"]


# --- The file's contents -----------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One training run: its hyperparameters and its losses after each epoch (1-based epochs:
    ``eval_loss[0]`` is the loss after the first epoch, at step ``steps_per_epoch``)."""

    run_id: str
    config: dict[str, Any]
    eval_loss: tuple[float, ...]
    loss: tuple[float, ...]
    steps_per_epoch: int

    @property
    def best_eval_loss(self) -> float:
        return min(self.eval_loss)

    @property
    def best_epoch(self) -> int:
        """The first epoch (1-based) at which the run reached its best eval loss."""
        return self.eval_loss.index(self.best_eval_loss) + 1


@dataclass(frozen=True)
class Dataset:
    """The runs of one dataset: one model group, every run with the same horizon ``epochs``."""

    name: str
    task: Task
    metric: Metric
    epochs: int
    train_size: int
    validation_size: int
    runs: tuple[Run, ...]


def load_curves(path: Path | str = DEFAULT_OUT) -> list[Dataset]:
    """The datasets of a file :func:`main` wrote."""
    doc = orjson.loads(Path(path).read_bytes())
    return [Dataset(name=d["name"], task=d["task"], metric=d["metric"], epochs=d["epochs"],
                    train_size=d["train_size"], validation_size=d["validation_size"],
                    runs=tuple(Run(run_id=r["run_id"], config=r["config"],
                                   eval_loss=tuple(r["eval_loss"]), loss=tuple(r["loss"]),
                                   steps_per_epoch=r["steps_per_epoch"]) for r in d["runs"]))
            for d in doc["datasets"]]


def to_document(datasets: Sequence[Dataset]) -> dict[str, Any]:
    """The JSON document for ``datasets``, losses rounded to 5 significant digits."""
    return {"generated_by": GENERATED_BY, "datasets": [
        {"name": d.name, "task": d.task, "metric": d.metric, "epochs": d.epochs,
         "train_size": d.train_size, "validation_size": d.validation_size,
         "runs": [{"run_id": r.run_id, "config": r.config,
                   "eval_loss": [_round(x) for x in r.eval_loss],
                   "loss": [_round(x) for x in r.loss],
                   "steps_per_epoch": r.steps_per_epoch} for r in d.runs]}
        for d in datasets]}


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


# --- What is trained ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How one dataset is trained: which loader, for how many epochs, over which rates."""

    name: str
    task: Task
    load: Callable[..., Any]
    epochs: int
    learning_rates: tuple[float, ...]

    @property
    def metric(self) -> Metric:
        return "log_loss" if self.task == "classification" else "mse"


# The rates span too small (still far from converged at the horizon), good, and too large
# (jumping about, or overfitting within a few epochs). The regression's top rate is lower:
# at 0.3 its weights overflow.
PLANS = (
    Plan("digits", "classification", load_digits, 40,
         (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)),
    Plan("breast_cancer", "classification", load_breast_cancer, 60,
         (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)),
    Plan("wine", "classification", load_wine, 60,
         (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)),
    Plan("diabetes", "regression", load_diabetes, 60,
         (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)),
)


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: np.ndarray | None  # None for a regression


def split(plan: Plan) -> Split:
    """The dataset's one train/validation split, features (and a regression's target)
    standardized on the training part."""
    x, y = plan.load(return_X_y=True)
    classify = plan.task == "classification"
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED,
        stratify=y if classify else None)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    if not classify:
        mean, std = y_train.mean(), y_train.std()
        y_train, y_val = (y_train - mean) / std, (y_val - mean) / std
    return Split(x_train, y_train, x_val, y_val, np.unique(y) if classify else None)


def train(plan: Plan, data: Split, learning_rate: float, width: int, seed: int,
          epochs: int) -> Run:
    """One run, one ``partial_fit`` (one pass over the shuffled training set) per epoch."""
    model_class = MLPClassifier if data.classes is not None else MLPRegressor
    model = model_class(hidden_layer_sizes=(width,), solver="sgd", learning_rate="constant",
                        learning_rate_init=learning_rate, momentum=MOMENTUM,
                        nesterovs_momentum=True, alpha=ALPHA, batch_size=BATCH_SIZE,
                        random_state=seed)
    eval_loss, loss = [], []
    for _ in range(epochs):
        if data.classes is not None:
            model.partial_fit(data.x_train, data.y_train, classes=data.classes)
            eval_loss.append(log_loss(data.y_val, model.predict_proba(data.x_val),
                                      labels=data.classes))
        else:
            model.partial_fit(data.x_train, data.y_train)
            eval_loss.append(mean_squared_error(data.y_val, model.predict(data.x_val)))
        loss.append(model.loss_)
    run_id = f"{plan.name}-lr{learning_rate:g}-w{width}-s{seed}"
    if not all(math.isfinite(v) and v > 0 for v in eval_loss + loss):
        raise ValueError(f"{run_id}: a loss is not a finite positive number")
    config = {"learning_rate": learning_rate, "hidden_width": width, "batch_size": BATCH_SIZE,
              "seed": seed}
    return Run(run_id=run_id, config=config, eval_loss=tuple(float(v) for v in eval_loss),
               loss=tuple(float(v) for v in loss),
               steps_per_epoch=math.ceil(len(data.y_train) / BATCH_SIZE))


@dataclass(frozen=True)
class Grid:
    """The runs to train for one dataset: every rate times every width times every seed."""

    learning_rates: tuple[float, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int


def full_grid(plan: Plan) -> Grid:
    return Grid(plan.learning_rates, WIDTHS, SEEDS, plan.epochs)


def quick_grid(plan: Plan) -> Grid:
    """The smallest and the middle rate, one width, one seed, 3 epochs: a check that it works."""
    rates = (plan.learning_rates[0], plan.learning_rates[len(plan.learning_rates) // 2])
    return Grid(rates, WIDTHS[:1], SEEDS[:1], 3)


def generate(plan: Plan, grid: Grid) -> Dataset:
    """Every run of ``grid`` on ``plan``'s dataset."""
    data = split(plan)
    runs = tuple(train(plan, data, lr, width, seed, grid.epochs)
                 for lr in grid.learning_rates for width in grid.widths for seed in grid.seeds)
    return Dataset(name=plan.name, task=plan.task, metric=plan.metric, epochs=grid.epochs,
                   train_size=len(data.y_train), validation_size=len(data.y_val), runs=runs)


# --- The report --------------------------------------------------------------------------------

def summary(datasets: Sequence[Dataset]) -> str:
    """A Markdown table: per dataset its runs, the best and worst of their best eval losses,
    and the share of runs whose best epoch comes before the last (they overfit)."""
    rows = []
    for d in datasets:
        bests = [r.best_eval_loss for r in d.runs]
        early = sum(r.best_epoch < d.epochs for r in d.runs)
        rates = {r.config["learning_rate"] for r in d.runs}
        rows.append([d.name, d.metric, str(d.epochs), str(len(d.runs)), str(len(rates)),
                     f"{min(bests):.4g}", f"{max(bests):.4g}",
                     f"{early / len(d.runs):.0%}"])
    return table(["dataset", "metric", "epochs", "runs", "rates", "best best_eval_loss",
                  "worst best_eval_loss", "best epoch before the last"], rows,
                 align=["l", "l", "r", "r", "r", "r", "r", "r"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=GENERATED_BY, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    parser.add_argument("--quick", action="store_true",
                        help="2 runs of 3 epochs per dataset, to check that it works")
    args = parser.parse_args(argv)
    grid_of = quick_grid if args.quick else full_grid
    datasets = []
    started = time.process_time()
    with threadpool_limits(limits=1):  # the machine is shared; one core is plenty
        for plan in PLANS:
            t0 = time.process_time()
            datasets.append(dataset := generate(plan, grid_of(plan)))
            print(f"{plan.name}: {len(dataset.runs)} runs of {dataset.epochs} epochs "
                  f"({dataset.train_size} train / {dataset.validation_size} validation), "
                  f"{time.process_time() - t0:.1f} s CPU", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(to_document(datasets)) + b"\n")
    # The table describes the file as written: rounding can tie a last epoch with an earlier one.
    print(f"## Learning curves\n\n{summary(load_curves(args.out))}\n\n"
          f"Wrote `{args.out}` ({args.out.stat().st_size / 1000:.0f} KB) in "
          f"{time.process_time() - started:.0f} s CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
