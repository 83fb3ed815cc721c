"""MLflow's experiments and runs as this gateway keeps them, and as MLflow's REST API answers
them: proto JSON with snake_case names, int64 as numbers, unset fields left out, as the
``mlflow`` package's ``message_to_json`` writes them. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
ACTIVE = "active"
ARTIFACTS = "mlflow-artifacts:"  # where MLflow's own server would say artifacts go


@dataclass(frozen=True, slots=True)
class Experiment:
    experiment_id: str
    name: str
    creation_time: int
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``Experiment`` message."""
        answer: dict[str, Any] = {
            "experiment_id": self.experiment_id, "name": self.name,
            "artifact_location": f"{ARTIFACTS}/{self.experiment_id}",
            "lifecycle_stage": ACTIVE}
        if self.creation_time:
            answer["creation_time"] = self.creation_time
            answer["last_update_time"] = self.creation_time
        if self.tags:
            answer["tags"] = [{"key": k, "value": v} for k, v in self.tags.items()]
        return answer

    def stored(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "name": self.name,
                "creation_time": self.creation_time, "tags": self.tags}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Experiment:
        return cls(str(data["experiment_id"]), str(data["name"]), int(data["creation_time"]),
                   dict(data.get("tags") or {}))


DEFAULT_EXPERIMENT = Experiment(DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, 0)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What is kept of a run besides its params, tags and metrics; ``model`` is the model
    decided for it, None until then, and ``started`` whether its ``job_started`` went out
    (docs/mlflow.md)."""

    run_id: str
    experiment_id: str
    name: str
    user_id: str
    start_time: int
    status: str = "RUNNING"
    end_time: int | None = None
    model: str | None = None
    started: bool = False

    def stored(self) -> dict[str, str]:
        """The fields of its Redis hash (``model`` and ``started`` are set apart, once)."""
        out = {"experiment_id": self.experiment_id, "name": self.name,
               "user_id": self.user_id, "start_time": str(self.start_time),
               "status": self.status}
        if self.end_time is not None:
            out["end_time"] = str(self.end_time)
        return out

    @classmethod
    def from_stored(cls, run_id: str, data: Mapping[str, str]) -> RunInfo:
        end = data.get("end_time")
        return cls(run_id, data["experiment_id"], data["name"], data.get("user_id", ""),
                   int(data["start_time"]), data.get("status", "RUNNING"),
                   int(end) if end else None, data.get("model"), data.get("started") == "1")

    def ended(self, status: str, end_time: int | None) -> RunInfo:
        return replace(self, status=status, end_time=end_time)

    def to_json(self) -> dict[str, Any]:
        """The ``RunInfo`` message."""
        answer: dict[str, Any] = {
            "run_uuid": self.run_id, "run_id": self.run_id, "run_name": self.name,
            "experiment_id": self.experiment_id, "user_id": self.user_id,
            "status": self.status, "start_time": self.start_time}
        if self.end_time:
            answer["end_time"] = self.end_time
        answer["artifact_uri"] = f"{ARTIFACTS}/{self.experiment_id}/{self.run_id}/artifacts"
        answer["lifecycle_stage"] = ACTIVE
        return answer


def run_json(info: RunInfo, params: Mapping[str, str], tags: Mapping[str, str],
             metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``Run`` message: its info, and its latest metrics, params and tags."""
    data: dict[str, Any] = {}
    if metrics:
        data["metrics"] = metrics
    if params:
        data["params"] = [{"key": k, "value": v} for k, v in params.items()]
    if tags:
        data["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
    return {"info": info.to_json(), "data": data, "inputs": {}}


def is_later(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Is metric ``new`` the latest rather than ``old``? MLflow's rule: the greater step, then
    the greater timestamp, then the greater value."""
    if old is None:
        return True
    return (new["step"], new["timestamp"], _num(new["value"])) >= (
        old["step"], old["timestamp"], _num(old["value"]))


def _num(value: float | str) -> float:
    return float(value)
