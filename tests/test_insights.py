"""The insights of docs/insights.md on table-driven cases: cost, the Pareto front,
replicates and seed noise, hyperparameter effects, and whether a difference is real."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.insights import (
    flatten,
    gpu_hours,
    hyperparameters,
    is_seed_key,
    model_insights,
    noise_pct,
    pareto,
    pooled_noise,
    replicates,
    significance,
    without_seeds,
)


def run(job_id: str, best: float | None, config: dict[str, Any] | None = None, *,
        gpus: int | None = None, created: float = 0.0, updated: float = 3600.0,
        finished: float | None = None, archived: bool = False) -> dict[str, Any]:
    """A job view with only what the insights read."""
    return {"id": job_id, "best_eval_loss": best, "config": config, "gpu_count": gpus,
            "created_at": created, "updated_at": updated, "finished_at": finished,
            "archived": archived}


@pytest.mark.parametrize(("view", "hours"), [
    (run("a", 0.5, gpus=2, created=0, updated=1800), 1.0),  # running: up to its last event
    (run("a", 0.5, gpus=4, created=0, updated=9000, finished=3600), 4.0),  # finished: to the end
    (run("a", 0.5, gpus=0), 0.0),
    (run("a", 0.5), None),  # no gpu_count: unknown
])
def test_gpu_hours(view: dict[str, Any], hours: float | None) -> None:
    assert gpu_hours(view) == hours


@pytest.mark.parametrize(("views", "front"), [
    ([run("cheap-bad", 0.9, gpus=1, updated=3600), run("dear-good", 0.5, gpus=4, updated=3600),
      run("dear-bad", 0.95, gpus=4, updated=3600)], ["cheap-bad", "dear-good"]),
    ([run("a", 0.5, gpus=1), run("b", 0.5, gpus=1)], ["a", "b"]),  # a tie dominates neither
    ([run("a", 0.5, gpus=1), run("b", 0.4, gpus=1)], ["b"]),  # as cheap and better
    ([run("a", 0.5, gpus=1), run("no-cost", 0.1), run("arch", 0.1, gpus=1, archived=True),
      run("no-loss", None, gpus=1)], ["a"]),  # only costed candidates are placed
])
def test_pareto_front(views: list[dict[str, Any]], front: list[str]) -> None:
    assert pareto(views) == front


@pytest.mark.parametrize(("name", "seed"), [
    ("seed", True), ("SEED", True), ("data_seed", True), ("Shuffle_Seed", True),
    ("seeds", False), ("seedling", False), ("learning_rate", False),
])
def test_seed_keys(name: str, seed: bool) -> None:
    assert is_seed_key(name) is seed


def test_seed_keys_go_at_any_depth_and_nested_keys_flatten() -> None:
    config = {"lr": 1e-4, "seed": 1, "optim": {"name": "adamw", "data_seed": 3},
              "stages": [{"epochs": 2, "seed": 9}]}
    assert without_seeds(config) == {"lr": 1e-4, "optim": {"name": "adamw"},
                                     "stages": [{"epochs": 2}]}
    assert flatten(config) == {"lr": 1e-4, "optim.name": "adamw",
                               "stages": [{"epochs": 2, "seed": 9}]}


def test_replicates_are_candidates_whose_configs_differ_only_by_seed() -> None:
    views = [
        run("a1", 0.50, {"lr": 1e-4, "seed": 1, "optim": {"data_seed": 1}}, created=1),
        run("a2", 0.52, {"lr": 1e-4, "seed": 2, "optim": {"data_seed": 7}}, created=2),
        run("a3", 0.54, {"lr": 1e-4, "seed": 3, "optim": {"data_seed": 5}}, created=3),
        run("b1", 0.70, {"lr": 1e-3, "seed": 1, "optim": {}}, created=4),
        run("b2", 0.71, {"lr": 1e-3, "seed": 2, "optim": {}}, archived=True),  # not a candidate
        run("c1", 0.60, {"lr": 3e-4, "seed": 1}),  # alone
        run("n1", 0.60), run("n2", 0.60),  # no config: nobody's replicate
    ]
    [group] = replicates(views)
    assert group["config"] == {"lr": 1e-4, "optim": {}}
    assert (group["job_ids"], group["n"]) == (["a1", "a2", "a3"], 3)
    assert group["best_eval_loss_mean"] == pytest.approx(0.52)
    assert group["best_eval_loss_std"] == pytest.approx(0.02)
    # t(0.975, 2) = 4.3027: the mean +- 4.3027 * 0.02 / sqrt(3)
    assert group["ci95"] == pytest.approx([0.52 - 0.049683, 0.52 + 0.049683], abs=1e-6)
    assert pooled_noise(views) == pytest.approx(0.02)
    assert noise_pct(views) == pytest.approx(0.02 / 0.52 * 100)
    assert replicates(views[3:]) == [] and noise_pct(views[3:]) is None


def grid() -> list[dict[str, Any]]:
    """Eight runs where the learning rate drives the loss up, the optimizer does nothing."""
    out = []
    for i, lr in enumerate([1e-5, 3e-5, 1e-4, 3e-4] * 2):
        optimizer = "adamw" if i % 2 else "sgd"
        out.append(run(f"r{i}", 0.3 + lr * 1000 + 0.001 * (i % 3),
                       {"learning_rate": lr, "optimizer": optimizer, "seed": i,
                        "lora": {"rank": 8}, "tag": "x" if i < 3 else None}))
    return out


def test_the_key_that_drives_the_loss_ranks_first_with_its_sign() -> None:
    found = {h["name"]: h for h in hyperparameters(grid())}
    assert next(iter(found)) == "learning_rate"
    lr = found["learning_rate"]
    assert (lr["kind"], lr["runs"]) == ("numeric", 8)
    assert lr["effect"] > 0.9  # larger rates, larger loss
    assert lr["p_value"] < 0.01 and lr["importance"] > 0.8
    optimizer = found["optimizer"]
    assert (optimizer["kind"], optimizer["effect"]) == ("categorical", None)
    assert optimizer["importance"] < 0.2 and optimizer["p_value"] > 0.05
    assert "seed" not in found  # seed keys are never hyperparameters
    assert "lora.rank" not in found  # one value only
    assert set(found) == {"learning_rate", "optimizer", "tag"}


def test_a_key_carried_by_fewer_than_five_candidates_is_not_judged() -> None:
    views = grid()[:4]
    assert hyperparameters(views) == []


def seeds_of(name: str, losses: list[float], config: dict[str, Any]) -> list[dict[str, Any]]:
    return [run(f"{name}{i}", loss, {**config, "seed": i}, created=i)
            for i, loss in enumerate(losses)]


def test_two_seeds_of_one_config_differ_within_noise() -> None:
    views = seeds_of("a", [0.50, 0.53], {"lr": 1e-4})
    assert significance(views[1], views[0], views) == {
        "job_id": "a1", "verdict": "within_noise", "p_value": None,
        "method": "replicates of one configuration"}


def test_configs_far_apart_differ_for_real() -> None:
    good = seeds_of("g", [0.500, 0.502, 0.499], {"lr": 1e-4})
    bad = seeds_of("b", [0.600, 0.603, 0.598], {"lr": 1e-3})
    verdict = significance(bad[0], good[1], good + bad)
    assert (verdict["verdict"], verdict["method"]) == ("real", "Welch's t-test over replicates")
    assert verdict["p_value"] < 0.001


def test_a_run_without_replicates_is_judged_by_the_models_pooled_noise() -> None:
    noise = seeds_of("s", [0.50, 0.52], {"lr": 1e-4})  # sigma 0.01414
    close, far = run("close", 0.505, {"lr": 3e-4}), run("far", 0.60, {"lr": 1e-3})
    views = [*noise, close, far]
    near = significance(close, noise[0], views)
    assert (near["verdict"], near["method"]) == ("within_noise", "the model's pooled seed noise")
    assert near["p_value"] == pytest.approx(0.8026, abs=1e-3)
    assert significance(far, noise[0], views)["verdict"] == "real"


def test_without_replicates_a_difference_is_unknown() -> None:
    views = [run("a", 0.5, {"lr": 1e-4}), run("b", 0.9, {"lr": 1e-3})]
    assert significance(views[1], views[0], views) == {
        "job_id": "b", "verdict": "unknown", "p_value": None, "method": None}


def test_model_insights_puts_it_together() -> None:
    views = [*grid(), run("costly", 2.0, None, gpus=2, updated=7200),
             run("gone", 0.1, None, gpus=8, archived=True)]
    out = model_insights("org/model", "org/model", views)
    assert out["gpu_hours"] == 4.0  # archived jobs do not count
    assert out["pareto"] == ["costly"]
    assert out["points"] == [{"job_id": "costly", "name": None, "gpu_hours": 4.0,
                              "best_eval_loss": 2.0}]
    assert [g["job_ids"] for g in out["replicates"]] == [["r3", "r7"]]  # only seeds differ
    assert out["noise_pct"] == pytest.approx(0.001 / 2 ** 0.5 / 0.6005 * 100)  # sample std
    assert out["hyperparameters"][0]["name"] == "learning_rate"
