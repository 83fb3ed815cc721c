"""MLflow's error answers: ``{"error_code": ..., "message": ...}`` with MLflow's HTTP status
for the code, which the ``mlflow`` client turns into an ``MlflowException`` of that code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from monitor.redistools import UNREACHABLE
from web.errors import ApiError
from web.responses import JSON

log = logging.getLogger("monitor.gateway")
M = TypeVar("M", bound=BaseModel)

STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "INTERNAL_ERROR": 500,
    "TEMPORARILY_UNAVAILABLE": 503,
}


# The gateway's own refusals (a body too large, say), in MLflow's codes.
FROM_STATUS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
               503: "TEMPORARILY_UNAVAILABLE"}


class MlflowError(Exception):
    def __init__(self, error_code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.headers = headers

    def response(self) -> JSON:
        return JSON({"error_code": self.error_code, "message": self.message},
                    status_code=STATUS[self.error_code], headers=self.headers)


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)


def describe(error: ValidationError) -> str:
    """MLflow-like words for the first bad field: ``Invalid value ... for parameter 'x'``."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "missing":
        return f"Missing value for required parameter '{where}'."
    if not where:
        return first["msg"].removeprefix("Value error, ")
    return f"Invalid value for parameter '{where}': {first['msg']}."


def parse(model: type[M], raw: bytes | dict[str, object]) -> M:
    """A request body (JSON bytes) or query (a dict) as ``model``; MLflow's 400 if it is not one."""
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw or b"{}")
        return model.model_validate(raw)
    except ValidationError as e:
        raise invalid(describe(e)) from None


class MlflowRoute(APIRoute):
    """A route whose every failure answers in MLflow's shape: its own errors, Redis away
    (503, which the client retries), and a defect of ours (500, logged)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except MlflowError as e:
                return e.response()
            except ApiError as e:
                code = FROM_STATUS.get(e.status, "INVALID_PARAMETER_VALUE")
                return MlflowError(code, e.detail, e.headers).response()
            except UNREACHABLE as e:
                log.warning("Redis unreachable during %s %s: %s", request.method,
                            request.url.path, e)
                return MlflowError("TEMPORARILY_UNAVAILABLE", "Redis is unreachable; try "
                                   "again shortly", {"Retry-After": "1"}).response()
            except Exception:
                log.exception("error in %s %s", request.method, request.url.path)
                return MlflowError("INTERNAL_ERROR", "internal error; the gateway's log has "
                                   "the details").response()

        return answer
