"""The part of MLflow's REST tracking API that the ``mlflow`` client logs with
(docs/mlflow.md): code that logs to MLflow reports here by pointing ``MLFLOW_TRACKING_URI``
at the gateway. Runs become jobs through the same events, checks and event ids as
``POST /api/events``."""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.responses import PlainTextResponse

from monitor.settings import GatewaySettings
from web.api import read_capped, validate_events
from web.errors import ApiError
from web.gateway import Gateway, gateway_of
from web.mlflow import mapping, requests
from web.mlflow.errors import MlflowError, MlflowRoute, invalid, not_found, parse
from web.mlflow.records import Experiment, RunInfo, run_json
from web.mlflow.store import MlflowStore, ParamChanged
from web.responses import JSON
from web.security import basic_password_ok, origin_ok, token_ok

PREFIX = "/api/2.0/mlflow"
API_VERSION = "2.0"  # what GET /version answers: the REST API version spoken here
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
MAX_BODY_BYTES = 2 * 1024 * 1024  # a full log-batch (100 params of 6,000 characters) is < 1 MiB


def require_token(request: Request) -> None:
    """``MONITOR_TOKEN`` as ``Authorization: Bearer`` (``MLFLOW_TRACKING_TOKEN``) or as the
    password of basic auth (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``)."""
    settings = gateway_of(request).settings
    if not (token_ok(settings, request) or basic_password_ok(settings, request)):
        raise MlflowError("UNAUTHENTICATED", "missing or wrong token: set "
                          "MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_PASSWORD) to the "
                          "monitor's MONITOR_TOKEN", {"WWW-Authenticate": "Bearer"})
    if request.method not in ("GET", "HEAD") and not origin_ok(settings, request):
        raise MlflowError("PERMISSION_DENIED", "cross-site request refused (Origin not allowed)")


class Tracking:
    """One request's view of the MLflow state and the event path."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.store = MlflowStore(gw.redis, gw.keys)
        self.names = metric_names(gw.settings)

    async def publish(self, events: list[dict[str, Any]]) -> None:
        """Check the events as ``POST /api/events`` does and append them, all or none."""
        if not events:
            return
        try:
            checked = validate_events(events)
        except ApiError as e:
            raise invalid(e.detail) from None
        await self.gw.publish(checked)
        for event in events:
            if event["type"] == "job_started":
                await self.store.mark_started(event["job_id"])
                break

    async def context(self, run_id: str) -> tuple[RunInfo, dict[str, str], dict[str, str]]:
        found = await self.store.run_with_context(run_id)
        if found is None:
            raise not_found(f"Run with id={run_id} not found")
        return found

    async def experiment_of(self, info: RunInfo) -> Experiment:
        experiment = await self.store.experiment(info.experiment_id)
        if experiment is None:
            raise not_found(f"No Experiment with id={info.experiment_id} exists")
        return experiment

    async def model_of(self, info: RunInfo, params: dict[str, str],
                       tags: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        """The run's model, deciding it now if nobody has (docs/mlflow.md#the-model), and the
        run's ``job_started`` to publish first unless it went out already. (Two gateways that
        decide at once both send one, which is harmless; and a call after one that could not
        send it, Redis being away, sends it then, so the job still gets its name and config.)"""
        model = info.model
        if model is None:
            experiment = await self.experiment_of(info)
            chosen = mapping.choose_model(params, tags, experiment.name)
            model = await self.store.decide_model(info.run_id, chosen)
        elif info.started:
            return model, []
        return model, [mapping.job_started(info.run_id, model, info.name, info.start_time,
                                           params)]

    async def log_params(self, info: RunInfo, params: list[requests.Param],
                         tags: dict[str, str]) -> None:
        """Record params; they are the job's config, and may name its model."""
        if not params:
            return
        try:
            every = await self.store.add_params(info.run_id, [(p.key, p.value) for p in params])
        except ParamChanged as e:
            raise invalid(
                f"Changing param values is not allowed. Param with key='{e.key}' was already "
                f"logged with value='{e.old}' for run ID='{info.run_id}'. Attempted logging "
                f"new value '{e.new}'.") from None
        model = info.model
        if model is None:
            named = mapping.model_from_params(every)
            if named is None:
                return  # the config goes out with the job_started that decides the model
            model = await self.store.decide_model(info.run_id, named)
        await self.publish([mapping.job_started(info.run_id, model, info.name, info.start_time,
                                                every)])

    async def log_metrics(self, info: RunInfo, params: dict[str, str], tags: dict[str, str],
                          metrics: list[requests.Metric]) -> None:
        """Losses become ``metrics`` events; every metric's latest value is kept for
        ``runs/get``."""
        if not metrics:
            return
        values = [mapping.MetricValue(m.key, metric_number(m.value), m.timestamp, m.step)
                  for m in metrics]
        observed = mapping.metrics_events(info.run_id, values, self.names)
        if observed:
            model, events = await self.model_of(info, params, tags)
            await self.publish(events + [{**e, "model_name": model} for e in observed])
        await self.store.save_latest(info.run_id, [
            {"key": m.key, "value": stored_value(m.value), "timestamp": m.timestamp,
             "step": m.step} for m in metrics])

    async def rename(self, info: RunInfo, name: str, params: dict[str, str]) -> RunInfo:
        if not name or name == info.name:
            return info
        info = dataclasses.replace(info, name=name)
        await self.store.save_run(info)
        await self.store.set_tags(info.run_id, {mapping.RUN_NAME_TAG: name})
        if info.model is not None:
            await self.publish([mapping.job_started(info.run_id, info.model, name,
                                                    info.start_time, params)])
        return info


def metric_names(settings: GatewaySettings) -> mapping.MetricNames:
    return mapping.MetricNames.with_extra(settings.mlflow_loss_names,
                                          settings.mlflow_eval_loss_names)


def metric_number(raw: float | str) -> float | None:
    if isinstance(raw, str):
        stored_value(raw)  # a text that is no number at all is refused
    return mapping.metric_value(raw)


def stored_value(raw: float | str) -> float | str:
    """A metric value as MLflow's JSON writes it: a number, or ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``."""
    try:
        number = float(raw)
    except ValueError:
        raise invalid(f"Invalid value {raw!r} for parameter 'value': it is not a number") \
            from None
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def now_ms() -> int:
    return int(time.time() * 1000)


def tracking_of(request: Request) -> Tracking:
    return Tracking(gateway_of(request))


Track = Annotated[Tracking, Depends(tracking_of)]
tracking = APIRouter(prefix=PREFIX, route_class=MlflowRoute,
                     dependencies=[Depends(require_token)], include_in_schema=False)


async def body(request: Request) -> bytes:
    return await read_capped(request, MAX_BODY_BYTES)


def query(request: Request) -> dict[str, object]:
    return dict(request.query_params)


Body = Annotated[bytes, Depends(body)]
Query = Annotated[dict[str, object], Depends(query)]


@tracking.post("/experiments/create")
async def create_experiment(raw: Body, t: Track) -> Response:
    req = parse(requests.CreateExperiment, raw)
    experiment_id = await t.store.create_experiment(
        req.name, {tag.key: tag.value for tag in req.tags}, now_ms())
    if experiment_id is None:
        raise MlflowError("RESOURCE_ALREADY_EXISTS",
                          f"Experiment(name={req.name}) already exists.")
    return JSON({"experiment_id": experiment_id})


@tracking.get("/experiments/get")
async def get_experiment(q: Query, t: Track) -> Response:
    req = parse(requests.GetExperiment, q)
    experiment = await t.store.experiment(req.experiment_id)
    if experiment is None:
        raise not_found(f"No Experiment with id={req.experiment_id} exists")
    return JSON({"experiment": experiment.to_json()})


@tracking.get("/experiments/get-by-name")
async def get_experiment_by_name(q: Query, t: Track) -> Response:
    req = parse(requests.GetExperimentByName, q)
    experiment = await t.store.experiment_by_name(req.experiment_name)
    if experiment is None:
        raise not_found(f"Could not find experiment with name '{req.experiment_name}'")
    return JSON({"experiment": experiment.to_json()})


@tracking.post("/runs/create")
async def create_run(raw: Body, t: Track) -> Response:
    req = parse(requests.CreateRun, raw)
    if await t.store.experiment(req.experiment_id) is None:
        raise not_found(f"No Experiment with id={req.experiment_id} exists")
    tags = {tag.key: tag.value for tag in req.tags}
    run_id = uuid.uuid4().hex
    name = req.run_name or tags.get(mapping.RUN_NAME_TAG) or f"run-{run_id[:8]}"
    tags[mapping.RUN_NAME_TAG] = name
    user = req.user_id or tags.get("mlflow.user", "")
    info = RunInfo(run_id, req.experiment_id, name, user, req.start_time or now_ms())
    await t.store.create_run(info, tags)
    return JSON({"run": run_json(info, {}, tags, [])})


@tracking.post("/runs/update")
async def update_run(raw: Body, t: Track) -> Response:
    req = parse(requests.UpdateRun, raw)
    if req.status is not None and req.status not in STATUSES:
        raise invalid(f"Invalid value {req.status!r} for parameter 'status': one of "
                      f"{', '.join(STATUSES)}")
    info, params, tags = await t.context(req.run)
    info = await t.rename(info, req.run_name, params)
    if req.status is not None and req.status != info.status:
        info = info.ended(req.status, req.end_time if req.status in mapping.END_STATUSES
                          else None)
        await t.store.save_run(info)
        if req.status in mapping.END_STATUSES:
            model, events = await t.model_of(info, params, tags)
            events.append(mapping.job_finished(info.run_id, model, req.status, req.end_time))
            await t.publish(events)
    return JSON({"run_info": info.to_json()})


@tracking.get("/runs/get")
async def get_run(q: Query, t: Track) -> Response:
    req = parse(requests.GetRun, q)
    info, params, tags = await t.context(req.run)
    return JSON({"run": run_json(info, params, tags, await t.store.latest(req.run))})


@tracking.post("/runs/search")
async def search_runs(raw: Body, t: Track) -> Response:
    req = parse(requests.SearchRuns, raw)
    if req.filter.strip() or req.page_token:
        raise invalid("runs/search here takes experiment_ids and max_results only (no filter, "
                      "no page_token): this monitor speaks the logging part of MLflow's API")
    runs = []
    for run_id in await t.store.runs_of(req.experiment_ids, req.max_results):
        found = await t.store.run_with_context(run_id)
        if found is not None:
            info, params, tags = found
            runs.append(run_json(info, params, tags, await t.store.latest(run_id)))
    return JSON({"runs": runs} if runs else {})


@tracking.post("/runs/log-metric")
async def log_metric(raw: Body, t: Track) -> Response:
    req = parse(requests.LogMetric, raw)
    info, params, tags = await t.context(req.run)
    await t.log_metrics(info, params, tags, [req])
    return JSON({})


@tracking.post("/runs/log-parameter")
async def log_param(raw: Body, t: Track) -> Response:
    req = parse(requests.LogParam, raw)
    info, _, tags = await t.context(req.run)
    await t.log_params(info, [req], tags)
    return JSON({})


@tracking.post("/runs/set-tag")
async def set_tag(raw: Body, t: Track) -> Response:
    req = parse(requests.SetTag, raw)
    info, params, _ = await t.context(req.run)
    await t.store.set_tags(info.run_id, {req.key: req.value})
    if req.key == mapping.RUN_NAME_TAG:
        await t.rename(info, req.value, params)
    return JSON({})


@tracking.post("/runs/log-batch")
async def log_batch(raw: Body, t: Track) -> Response:
    req = parse(requests.LogBatch, raw)
    info, params, tags = await t.context(req.run)
    await t.log_params(info, req.params, tags)
    if req.params:  # they may have decided the model, and are the config from now on
        info, params, tags = await t.context(req.run)
    new_tags = {tag.key: tag.value for tag in req.tags}
    await t.store.set_tags(info.run_id, new_tags)
    tags.update(new_tags)
    if mapping.RUN_NAME_TAG in new_tags:
        info = await t.rename(info, new_tags[mapping.RUN_NAME_TAG], params)
    await t.log_metrics(info, params, tags, req.metrics)
    return JSON({})


@tracking.post("/runs/log-inputs")
@tracking.post("/runs/log-model")
@tracking.post("/runs/outputs")
async def accepted_and_ignored(raw: Body, t: Track) -> Response:
    """Datasets and models logged with a run: accepted, not kept (docs/mlflow.md)."""
    req = parse(requests.GetRun, raw)
    await t.context(req.run)
    return JSON({})


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
unsupported = APIRouter(route_class=MlflowRoute, dependencies=[Depends(require_token)],
                        include_in_schema=False)


@unsupported.api_route(PREFIX + "/{rest:path}", methods=ALL_METHODS)
@unsupported.api_route("/api/2.0/mlflow-artifacts/{rest:path}", methods=ALL_METHODS)
@unsupported.api_route("/api/3.0/mlflow/{rest:path}", methods=ALL_METHODS)
async def not_supported(request: Request) -> Response:
    raise MlflowError("ENDPOINT_NOT_FOUND", (
        f"{request.method} {request.url.path} is not supported: this training monitor speaks "
        "only the logging part of MLflow's tracking API (experiments, runs, params, tags, "
        "metrics); artifacts, models, the model registry, traces and searches with filters "
        "are not kept here"))


probes = APIRouter(include_in_schema=False)


@probes.get("/health")
async def health() -> Response:
    """MLflow's liveness probe (``/healthz`` is this gateway's own, with Redis and lag)."""
    return PlainTextResponse("OK")


@probes.get("/version")
async def version() -> Response:
    return PlainTextResponse(API_VERSION)


router = APIRouter()
router.include_router(tracking)
router.include_router(unsupported)
router.include_router(probes)
