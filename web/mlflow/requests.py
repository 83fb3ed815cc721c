"""The bodies (and GET queries) of the MLflow calls served here, as MLflow's protos define
them. Lax where MLflow's own JSON reader is (int64 may come as a string), with MLflow's
limits; an unknown key is ignored, as a newer client may send more."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_KEY = 250  # MLflow's limit on metric, param and tag keys
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _RunBody(_Body):
    """``run_id``, or the older ``run_uuid`` that clients still send alongside it."""

    run_id: str = ""
    run_uuid: str = ""

    @model_validator(mode="after")
    def _some_id(self) -> _RunBody:
        if not (self.run_id or self.run_uuid):
            raise ValueError("Missing value for required parameter 'run_id'")
        return self

    @property
    def run(self) -> str:
        return self.run_id or self.run_uuid


class Tag(_Body):
    key: Key
    value: Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE)] = ""


class Param(_Body):
    key: Key
    value: Annotated[str, StringConstraints(max_length=MAX_PARAM_VALUE)] = ""


class Metric(_Body):
    key: Key
    value: float | str  # "NaN", "Infinity" and "-Infinity" as MLflow's JSON writes them
    timestamp: Int64
    step: Int64 = 0


class CreateExperiment(_Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    artifact_location: str = ""
    tags: list[Tag] = []


class GetExperiment(_Body):
    experiment_id: Annotated[str, StringConstraints(min_length=1)]


class GetExperimentByName(_Body):
    experiment_name: Annotated[str, StringConstraints(min_length=1)]


class CreateRun(_Body):
    experiment_id: str = "0"
    user_id: str = ""
    run_name: str = ""
    start_time: Int64 | None = None
    tags: list[Tag] = []


class UpdateRun(_RunBody):
    status: str | None = None
    end_time: Int64 | None = None
    run_name: str = ""


class GetRun(_RunBody):
    pass


class LogMetric(_RunBody, Metric):
    pass


class LogParam(_RunBody, Param):
    pass


class SetTag(_RunBody, Tag):
    pass


class LogBatch(_RunBody):
    metrics: Annotated[list[Metric], Field(max_length=MAX_BATCH_METRICS)] = []
    params: Annotated[list[Param], Field(max_length=MAX_BATCH_PARAMS)] = []
    tags: Annotated[list[Tag], Field(max_length=MAX_BATCH_TAGS)] = []


class SearchRuns(_Body):
    experiment_ids: list[str] = []
    filter: str = ""
    run_view_type: str = "ACTIVE_ONLY"
    max_results: Annotated[int, Field(ge=1, le=50_000)] = 1000
    order_by: list[str] = []
    page_token: str = ""
