"""Schemathesis over the gateway's own OpenAPI schema: no 500s, and every 4xx in the one
error shape."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings

from monitor.keys import Keys
from monitor.settings import GatewaySettings
from tests.gateway_helpers import publish
from web.app import create_app
from web.gateway import Gateway
from web.schemas import Error

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PREFIX = "test:apifuzz:"
# As if bound to all interfaces, so any Host header is served: the fuzzer's requests are the
# point. (Nothing listens: schemathesis calls the app in this process.)
SETTINGS = GatewaySettings(prefix=PREFIX, host="0.0.0.0", insecure_no_token=True)
app = create_app(SETTINGS)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def on_the_test_redis(redis_url: str) -> Any:
    """Point the app at the test Redis (known only once the session has one), with a job."""
    app.state.gateway = Gateway.build(dataclasses.replace(SETTINGS, redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    client.hset(keys.jobs, "job-a", b'{"id":"job-a","model_name":null,"model_display":"Unknown'
                b' Model","name":null,"status":"running","archived":false,"loss":null,'
                b'"eval_loss":null,"best_eval_loss":null,"best_epoch":null,"best_step":null,'
                b'"best_checkpoint_path":null,"final_loss":null,"final_eval_loss":null,'
                b'"total_epochs":null,"created_at":1.0,"updated_at":1.0,"finished_at":null,'
                b'"gpu_count":null,"error":null}')
    for order in (keys.order(False), keys.order(False, None)):  # indexed, as the worker does
        client.zadd(order, {"job-a": -1.0})
    client.set(keys.order_built, 1)
    publish(client, keys, [{"type": "metrics", "job_id": "job-a", "loss": 1.0}])
    yield
    for key in client.scan_iter(match=f"{PREFIX}*"):
        client.delete(key)
    client.close()


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_server_errors_and_one_error_shape(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text)
    if 400 <= response.status_code < 500:
        body = response.json()
        Error.model_validate(body)
        assert body["status"] == response.status_code
