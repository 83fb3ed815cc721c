"""Response shapes of the REST API (docs/rest.md), for OpenAPI at ``/docs``.

Handlers build plain dicts and send them as JSON directly (100,000 jobs must not be
re-validated on every request); these models document what they send, and a test checks the
documents against them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monitor.limits import MAX_REASON

Tier = Literal["yellow", "orange", "red"]
Status = Literal["running", "completed", "failed", "cancelled", "stopped"]
CompareKey = Literal["model", "job_id", "status", "best_eval_loss", "final_loss",
                     "final_eval_loss", "best_checkpoint_epoch", "checkpoint_path", "progress"]


ForecastVerdict = Literal["leading", "too_early", "cannot_win", "may_win"]


class Forecast(BaseModel):
    """Where a running job's best eval loss will be at its horizon (docs/insights.md#forecast)."""

    at_step: int = Field(description="the step of the last eval observation it used")
    horizon_step: int = Field(description="the step the run is expected to end at")
    best_p10: float
    best_p50: float = Field(description="the median of its best eval loss at the horizon; "
                                        "never above its best so far")
    best_p90: float
    p_beat_best: float | None = Field(description="the probability that it ends below the "
                                                  "best of the rest of its group; null when "
                                                  "it has no rival")
    verdict: ForecastVerdict
    gpu_hours_left: float | None = Field(description="GPU-hours to the horizon at its pace "
                                                     "so far; null without gpu_count")


class StopRequested(BaseModel):
    at: float = Field(description="when it was asked, seconds since the epoch")
    by: Literal["user", "forecast"]
    reason: str | None


class StopRequest(BaseModel):
    """The optional body of ``POST /api/jobs/{id}/stop``."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=MAX_REASON,
                               description="said to the trainer and shown on the page")


class JobView(BaseModel):
    """A job's state with its place in its model group (docs/rest.md)."""

    id: str
    model_name: str | None
    model_display: str
    name: str | None
    status: Status
    archived: bool
    epoch: float | None = Field(description="the epoch of the latest observation")
    step: int | None = Field(description="the step of the latest observation")
    loss: float | None
    eval_loss: float | None
    best_eval_loss: float | None
    best_epoch: float | None
    best_step: int | None
    best_checkpoint_path: str | None
    final_loss: float | None
    final_eval_loss: float | None
    total_epochs: int | None
    total_steps: int | None = Field(description="the step the run is planned to end at")
    created_at: float
    updated_at: float
    finished_at: float | None
    gpu_count: int | None
    error: str | None = Field(description="the error text of a failed run")
    is_best: bool
    delta_pct: float | None = Field(description="how much worse than the group's best, in %")
    tier: Tier | None
    gpu_hours: float | None = Field(description="gpu_count times the time from start to end "
                                                "(or to the latest event while running)")
    eval_count: int = Field(description="how many eval observations the job has had")
    forecast: Forecast | None = Field(description="the advisor's forecast; null unless the "
                                                  "job is running with a known horizon")
    autostop: bool | None = Field(description="false: the forecast never stops this run")
    stop_requested: StopRequested | None = Field(description="the first request to stop it")
    stale: bool = Field(description="running, but neither an event nor a heartbeat arrived "
                                    "for MONITOR_STALE_AFTER seconds")
    last_seen: float | None = Field(description="when stale: the arrival of its last event "
                                                "or heartbeat")


class JobDetail(JobView):
    config: dict[str, object] | None


class JobList(BaseModel):
    version: str = Field(description="the id of the last update this list includes")
    jobs: list[JobView]


class JobPage(BaseModel):
    version: str = Field(description="the version the page was read at")
    jobs: list[JobView]
    next: str | None = Field(description="the cursor of the next page; null at the end")
    total: int | None = Field(description="how many jobs the filters select, when known "
                                          "without reading them")


class MetricPoint(BaseModel):
    step: int | None
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    ts: float
    extra: dict[str, float] | None = Field(
        None, description="other metrics by name; present when the event carried them")


class JobMetrics(BaseModel):
    job_id: str
    points: list[MetricPoint]


class ModelRow(BaseModel):
    model_name: str | None
    model_display: str
    job_count: int = Field(description="jobs that are not archived")
    archived_count: int
    best_job_id: str | None
    best_eval_loss: float | None


class CompareRow(BaseModel):
    """One metric of the comparison table (docs/rest.md, Comparison): a value per run."""

    key: CompareKey = Field(description="what the metric is, for code: `best_eval_loss`")
    label: str = Field(description="its name for people and the CSV: `Best Eval Loss`")
    values: list[str | float | int | None]
    best: str | float | int | None
    deltas: list[float | None] | None = None
    tiers: list[Tier | None] | None = None


class WhoAmI(BaseModel):
    origin: str | None = Field(description="the origin asked about")
    origin_allowed: bool = Field(description="whether a page there may open /ws and write "
                                             "(else: MONITOR_ALLOWED_ORIGINS)")


class AdvisorState(BaseModel):
    running: bool = Field(description="an advisor renewed its presence in the last 30 s")
    autostop: bool = Field(description="it asks runs that cannot win to stop")
    stop_below: float | None = Field(description="the p_beat_best below which it says "
                                                 "cannot_win")
    stale_after: float | None = Field(description="seconds of silence before a run is stale")


Verdict = Literal["real", "within_noise", "unknown"]


class OtherRun(BaseModel):
    job_id: str
    run_number: int
    delta_pct: float | None
    tier: Tier | None
    consider_archiving: bool
    verdict: Verdict = Field(description="the run's significance (see `significance`)")


class Significance(BaseModel):
    """Is a run worse than the selection's best by more than seed noise (docs/insights.md)?"""

    job_id: str
    verdict: Verdict
    p_value: float | None
    method: str | None = Field(description="how it was decided, e.g. Welch's t-test")


class Replicates(BaseModel):
    config: dict[str, object] = Field(description="the configuration, without seed keys")
    job_ids: list[str]
    n: int
    best_eval_loss_mean: float
    best_eval_loss_std: float
    ci95: list[float] = Field(description="95% interval for the mean")


class Hyperparameter(BaseModel):
    name: str = Field(description="the config key, nested keys joined with dots")
    kind: Literal["numeric", "categorical"]
    runs: int
    effect: float | None = Field(description="Spearman's rank correlation with best eval "
                                             "loss (numeric keys; negative: larger is better)")
    p_value: float
    importance: float = Field(description="share of the variance explained, 0 to 1")


class CostPoint(BaseModel):
    job_id: str
    name: str | None
    gpu_hours: float
    best_eval_loss: float


class Insights(BaseModel):
    model_name: str | None
    model_display: str
    gpu_hours: float | None
    pareto: list[str] = Field(description="candidates on the GPU-hours / best eval loss front")
    points: list[CostPoint] = Field(description="every candidate with known GPU-hours, "
                                                "cheapest first")
    replicates: list[Replicates]
    noise_pct: float | None = Field(description="pooled seed noise, % of the mean")
    hyperparameters: list[Hyperparameter]


class Recommendation(BaseModel):
    best_job_id: str | None
    run_number: int | None
    model_display: str | None
    best_eval_loss: float | None
    best_epoch: float | None
    total_epochs: int | None
    checkpoint_path: str | None
    others: list[OtherRun]


class Comparison(BaseModel):
    jobs: list[JobView]
    best_job_id: str | None
    rows: list[CompareRow]
    recommendation: Recommendation
    significance: list[Significance]


class Accepted(BaseModel):
    accepted: int


class Health(BaseModel):
    status: Literal["ok"]
    redis: Literal["ok"]
    worker_lag: int | None = Field(description="entries not yet read by a worker")
    pending: int = Field(description="entries read by a worker but not yet committed")


class ErrorField(BaseModel):
    loc: list[str | int]
    msg: str


class Error(BaseModel):
    """The one shape of every error answer."""

    detail: str = Field(description="one line saying what is wrong")
    status: int
    errors: list[ErrorField] = Field(default_factory=list,
                                     description="each offending field, for 422")
