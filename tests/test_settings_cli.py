"""Settings from flags and MONITOR_* variables, and the command line around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from monitor.events import event_adapter
from monitor.settings import (
    GatewaySettings,
    SettingsError,
    UpSettings,
    WorkerSettings,
    known_env_names,
    load,
)


def test_defaults_then_environment_then_flags() -> None:
    assert load(WorkerSettings, {}, {}) == WorkerSettings()
    env = {"MONITOR_PREFIX": "env:", "MONITOR_BATCH_SIZE": "50"}
    settings = load(WorkerSettings, {"batch_size": "7"}, env)
    assert (settings.prefix, settings.batch_size) == ("env:", 7)


@pytest.mark.parametrize(("cls", "flags", "env", "message"), [
    (WorkerSettings, {}, {"MONITOR_BATCH_SIZ": "5"}, "unknown setting MONITOR_BATCH_SIZ (known: "),
    (WorkerSettings, {}, {"MONITOR_BATCH_SIZE": "lots"},
     "MONITOR_BATCH_SIZE: expected an integer, got 'lots'"),
    (WorkerSettings, {"batch_size": "0"}, {}, "--batch-size='0': must be greater than 0"),
    (WorkerSettings, {"lease_ttl": "nan"}, {}, "--lease-ttl: expected a finite number, got 'nan'"),
    (WorkerSettings, {"redis_url": "localhost:6379"}, {},
     "--redis-url='localhost:6379': must start with redis://, rediss:// or unix://"),
    (WorkerSettings, {}, {"MONITOR_REDIS_URL": "redis://:99999"},
     "MONITOR_REDIS_URL='redis://:99999': not a valid URL (Port out of range 0-65535)"),
    (WorkerSettings, {"block": "2", "lease_ttl": "3"}, {},
     "--block / MONITOR_BLOCK (2.0) must be at most half of --lease-ttl / MONITOR_LEASE_TTL"),
    (WorkerSettings, {"log_level": "loud"}, {},
     "--log-level='loud': must be one of DEBUG, INFO, WARNING, ERROR"),
    (GatewaySettings, {}, {"MONITOR_ALLOWED_ORIGINS": "evil.example"},
     "MONITOR_ALLOWED_ORIGINS='evil.example': 'evil.example' is not an origin like"),
    (GatewaySettings, {"port": "70000"}, {}, "--port='70000': must be a port number"),
    (WorkerSettings, {}, {"MONITOR_COMPILED": "false"},
     "MONITOR_COMPILED='false': must be one of 0, 1"),
])
def test_unknown_or_malformed_settings_name_themselves(
        cls: type, flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        load(cls, flags, env)
    assert str(e.value).startswith(message)


def test_a_setting_of_another_command_is_not_unknown() -> None:
    assert load(WorkerSettings, {}, {"MONITOR_TOKEN": "x", "MONITOR_STEP_SECONDS": "1"})


def test_an_empty_token_means_none() -> None:
    assert load(GatewaySettings, {}, {"MONITOR_TOKEN": ""}).token is None


@pytest.mark.parametrize(("flags", "env", "data_dir", "persistent_dir"), [
    ({}, {"HOME": "/home/u"}, "/home/u/.local/share/training-monitor",
     "/home/u/.local/share/training-monitor"),
    ({}, {"HOME": "/home/u", "XDG_DATA_HOME": "/data"}, "/data/training-monitor",
     "/data/training-monitor"),
    ({}, {"HOME": "/home/u", "XDG_DATA_HOME": "relative"},
     "/home/u/.local/share/training-monitor", "/home/u/.local/share/training-monitor"),
    ({}, {"HOME": "/home/u", "MONITOR_DATA_DIR": "/srv/monitor"}, "/srv/monitor",
     "/srv/monitor"),
    ({"data_dir": "/flag"}, {"MONITOR_DATA_DIR": "/srv/monitor"}, "/flag", "/flag"),
    ({}, {"MONITOR_DATA_DIR": ""}, None, None),
    ({"ephemeral": "true"}, {"HOME": "/home/u"}, "/home/u/.local/share/training-monitor", None),
    ({}, {"HOME": "/home/u", "MONITOR_EPHEMERAL": "1"},
     "/home/u/.local/share/training-monitor", None),
])
def test_the_data_dir_defaults_to_the_users_data_home_and_empty_means_ephemeral(
        flags: dict[str, str], env: dict[str, str], data_dir: str | None,
        persistent_dir: str | None) -> None:
    settings = load(UpSettings, flags, env)
    assert (settings.data_dir, settings.persistent_dir) == (data_dir, persistent_dir)
    assert {"MONITOR_DATA_DIR", "MONITOR_EPHEMERAL"} <= known_env_names()


def _monitor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=60, check=False)


def test_a_bad_setting_is_one_line_and_a_non_zero_exit() -> None:
    done = _monitor("worker", env={"MONITOR_BATCH_SIZE": "x"})
    assert done.returncode == 2
    assert done.stderr == "monitor worker: error: MONITOR_BATCH_SIZE: expected an integer, " \
                          "got 'x'\n"
    done = _monitor("worker", "--no-such-flag")
    assert done.returncode == 2 and "unrecognized arguments: --no-such-flag" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_explains_itself() -> None:
    top = _monitor("--help")
    assert top.returncode == 0
    for command in ("worker", "gateway", "demo", "schema"):
        assert command in top.stdout
        assert _monitor(command, "--help").returncode == 0
    assert "MONITOR_LEASE_TTL" in _monitor("worker", "--help").stdout
    up = " ".join(_monitor("up", "--help").stdout.split())
    assert "[env MONITOR_DATA_DIR, default $XDG_DATA_HOME/training-monitor or " \
           "~/.local/share/training-monitor]" in up
    assert "Only without MONITOR_REDIS_URL [env MONITOR_EPHEMERAL, default False]" in up


def test_schema_prints_the_event_json_schema() -> None:
    done = _monitor("schema")
    schema = json.loads(done.stdout)
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == {
        "job_started", "metrics", "checkpoint", "job_finished", "job_archived", "job_restored",
        "job_forecast", "job_stop_requested", "job_heartbeat", "job_stale"}
    assert schema["$defs"] == event_adapter.json_schema()["$defs"]
