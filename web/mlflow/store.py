"""What the MLflow API keeps in Redis beyond the events (docs/mlflow.md): experiments, each
run's info, params, tags and latest metrics, and the model decided for it. In Redis, not in
the process, so every gateway agrees and a restart keeps it. Each call is one round trip of
single-key commands (so it works on a Redis Cluster too)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from monitor.keys import Keys
from monitor.redistools import text
from web.mlflow.records import (
    DEFAULT_EXPERIMENT,
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    Experiment,
    RunInfo,
    is_later,
)


class ParamChanged(ValueError):
    """A param logged again with another value (MLflow refuses that too)."""

    def __init__(self, key: str, old: str, new: str) -> None:
        super().__init__(key)
        self.key, self.old, self.new = key, old, new


def _texts(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def _fields(values: Mapping[str, str | bytes]) -> dict[Any, Any]:
    """``values`` as redis-py's ``hset(mapping=...)`` is typed to take them."""
    return dict(values)


class MlflowStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # Experiments. The default one ("0", "Default") exists without being stored.
    async def create_experiment(self, name: str, tags: dict[str, str], now_ms: int) -> str | None:
        """The new experiment's id; None when the name is taken."""
        if name == DEFAULT_EXPERIMENT_NAME:
            return None
        experiment_id = str(await self.redis.incr(self.keys.mlflow_experiment_ids))
        if not await self.redis.hsetnx(self.keys.mlflow_experiment_names, name, experiment_id):
            return None
        experiment = Experiment(experiment_id, name, now_ms, tags)
        await self.redis.hset(self.keys.mlflow_experiments, experiment_id,
                              orjson.dumps(experiment.stored()))
        return experiment_id

    async def experiment(self, experiment_id: str) -> Experiment | None:
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            return DEFAULT_EXPERIMENT
        raw = await self.redis.hget(self.keys.mlflow_experiments, experiment_id)
        return Experiment.from_stored(orjson.loads(raw)) if raw is not None else None

    async def experiment_by_name(self, name: str) -> Experiment | None:
        if name == DEFAULT_EXPERIMENT_NAME:
            return DEFAULT_EXPERIMENT
        found = await self.redis.hget(self.keys.mlflow_experiment_names, name)
        return await self.experiment(text(found)) if found is not None else None

    # Runs.
    async def create_run(self, info: RunInfo, tags: Mapping[str, str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.mlflow_run(info.run_id), mapping=_fields(info.stored()))
            if tags:
                pipe.hset(self.keys.mlflow_tags(info.run_id), mapping=_fields(tags))
            pipe.zadd(self.keys.mlflow_experiment_runs(info.experiment_id),
                      {info.run_id: info.start_time})
            await pipe.execute()

    async def run(self, run_id: str) -> RunInfo | None:
        raw = await self.redis.hgetall(self.keys.mlflow_run(run_id))
        return RunInfo.from_stored(run_id, _texts(raw)) if raw else None

    async def run_with_context(self, run_id: str) -> tuple[RunInfo, dict[str, str],
                                                          dict[str, str]] | None:
        """The run, its params and its tags, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.mlflow_run(run_id))
            pipe.hgetall(self.keys.mlflow_params(run_id))
            pipe.hgetall(self.keys.mlflow_tags(run_id))
            raw, params, tags = await pipe.execute()
        if not raw:
            return None
        return RunInfo.from_stored(run_id, _texts(raw)), _texts(params), _texts(tags)

    async def save_run(self, info: RunInfo) -> None:
        await self.redis.hset(self.keys.mlflow_run(info.run_id), mapping=_fields(info.stored()))

    async def decide_model(self, run_id: str, model: str) -> str:
        """Fix the run's model to ``model`` unless one was decided already (by this or any
        other gateway); the model that holds."""
        key = self.keys.mlflow_run(run_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(key, "model", model)
            pipe.hget(key, "model")
            _, held = await pipe.execute()
        return text(held)

    async def mark_started(self, run_id: str) -> None:
        await self.redis.hset(self.keys.mlflow_run(run_id), "started", "1")

    async def add_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Record params; every param of the run afterwards. :class:`ParamChanged` when one
        was logged before with another value (nothing is recorded then)."""
        key = self.keys.mlflow_params(run_id)
        known = _texts(await self.redis.hgetall(key))
        new: dict[str, str] = {}
        for name, value in params:
            old = known.get(name, new.get(name))
            if old is not None and old != value:
                raise ParamChanged(name, old, value)
            new[name] = value
        if new:
            await self.redis.hset(key, mapping=_fields(new))
        return {**known, **new}

    async def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            await self.redis.hset(self.keys.mlflow_tags(run_id), mapping=_fields(tags))

    async def save_latest(self, run_id: str, metrics: Sequence[dict[str, Any]]) -> None:
        """Keep each metric key's latest value (MLflow's rule, :func:`is_later`)."""
        if not metrics:
            return
        key = self.keys.mlflow_latest(run_id)
        names = list(dict.fromkeys(m["key"] for m in metrics))
        stored = dict(zip(names, await self.redis.hmget(key, names)))
        latest: dict[str, dict[str, Any]] = {
            name: orjson.loads(raw) for name, raw in stored.items() if raw is not None}
        changed = {}
        for metric in metrics:
            if is_later(metric, latest.get(metric["key"])):
                latest[metric["key"]] = changed[metric["key"]] = metric
        if changed:  # an older value (a lower step) changes nothing
            await self.redis.hset(key, mapping=_fields({k: orjson.dumps(v)
                                                        for k, v in changed.items()}))

    async def latest(self, run_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.mlflow_latest(run_id))
        return [orjson.loads(v) for v in raw.values()]

    async def runs_of(self, experiment_ids: Sequence[str], limit: int) -> list[str]:
        """The newest ``limit`` run ids of these experiments, newest first."""
        found: list[tuple[float, str]] = []
        for experiment_id in experiment_ids:
            rows: list[Any] = await self.redis.zrevrange(self.keys.mlflow_experiment_runs(experiment_id),
                                              0, limit - 1, withscores=True)
            found.extend((float(score), text(run_id)) for run_id, score in rows)
        found.sort(reverse=True)
        return [run_id for _, run_id in found[:limit]]
