"""Settings for each process, from command-line flags and ``MONITOR_*`` environment variables.

A frozen settings object is built once per process and handed to constructors; nothing reads
the environment at import time. A flag beats a variable, a variable beats the default. An
unknown ``MONITOR_*`` variable or a malformed value is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import math
import os
import posixpath
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

from monitor import compiled
from monitor.limits import DEFAULT_PREFIX, DEFAULT_REDIS_URL, MAX_METRIC_NAME, MAX_PARTITIONS
from monitor.partitions import Partitioning

ENV_PREFIX = "MONITOR_"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class SettingsError(ValueError):
    """A setting is unknown or malformed; the message names it."""


def _setting(default: Any, help: str, check: Callable[[Any], str | None] | None = None,
             from_environ: EnvironDefault | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check,
                                            "from_environ": from_environ})


@dataclass(frozen=True)
class EnvironDefault:
    """A default that ``load`` computes from the environ it is given (e.g. a path under HOME);
    ``text`` says what it is in ``--help``."""

    compute: Callable[[Mapping[str, str]], Any]
    text: str


def check_redis_url(url: str) -> str | None:
    """Why ``url`` is not a Redis URL, or None when it is one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme != "unix" and not parts.hostname:
        return "has no host (e.g. redis://127.0.0.1:6379/0)"
    if parts.scheme == "unix" and not parts.path:
        return "has no socket path"
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range"
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        return f"database {db!r} is not a number"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _level(value: str) -> str | None:
    names = ("DEBUG", "INFO", "WARNING", "ERROR")
    return None if value.upper() in names else f"must be one of {', '.join(names)}"


def _partition_count(value: int) -> str | None:
    return None if 1 <= value <= MAX_PARTITIONS else f"must be from 1 to {MAX_PARTITIONS}"


def _prefix(value: str) -> str | None:
    return None if value and not any(c.isspace() for c in value) else "must be non-empty, no spaces"


@dataclass(frozen=True)
class CommonSettings:
    """What every process needs."""

    redis_url: str = _setting(DEFAULT_REDIS_URL, "Redis to use", check_redis_url)
    prefix: str = _setting(DEFAULT_PREFIX, "prefix of every Redis key", _prefix)
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR", _level)
    partitions: int = _setting(1, "partitions of the state, each with its own worker lease "
                                  "(docs/scale-out.md); every process of a deployment must "
                                  "use the same number", _partition_count)
    redis_cluster: bool = _setting(False, "MONITOR_REDIS_URL names a node of a Redis Cluster")

    def __post_init__(self) -> None:
        """Checks across settings; each subclass adds its own and calls this one."""
        if "{" in self.prefix or "}" in self.prefix:
            raise SettingsError(f"--prefix / MONITOR_PREFIX {self.prefix!r} must not contain "
                                "braces: partitions put their Redis Cluster hash tag there")

    @property
    def partitioning(self) -> Partitioning:
        return Partitioning(self.prefix, self.partitions, self.redis_cluster)


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """``monitor worker``: the stream consumer."""

    batch_size: int = _setting(1000, "events read and committed per batch", _positive)
    lease_ttl: float = _setting(3.0, "seconds a dead worker keeps the lease; a standby "
                                     "takes over after it", _positive)
    block: float = _setting(0.5, "seconds an idle worker waits for new events per poll",
                            _positive)
    updates_mb: int = _setting(64, "megabytes of updates kept for WebSocket resume "
                                   "(approximate; a new best in a big group weighs a lot)",
                               _positive)
    updates_keep: int = _setting(10_000, "updates kept for WebSocket resume (approximate)",
                                 _positive)
    dead_keep: int = _setting(10_000, "refused entries kept in <prefix>dead (approximate)",
                              _positive)
    hot_jobs: int = _setting(50_000, "job states kept in memory, the most recently touched; "
                                     "another is read back from Redis when an event touches "
                                     "it", _positive)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block * 2 > self.lease_ttl:
            raise SettingsError(f"--block / MONITOR_BLOCK ({self.block}) must be at most half of "
                                f"--lease-ttl / MONITOR_LEASE_TTL ({self.lease_ttl}), or the "
                                "lease runs out while the worker waits")


def _probability(value: float) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive)"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be more than 0 and at most 1"


@dataclass(frozen=True)
class AdvisorSettings(CommonSettings):
    """``monitor advisor``: the forecast of every running job (docs/insights.md)."""

    stop_below: float = _setting(0.05, "a running job whose probability of beating its "
                                       "group's best is below this is told cannot_win",
                                 _probability)
    advisor_debounce: float = _setting(0.2, "seconds the advisor waits after a job's change "
                                            "before forecasting it (changes meanwhile are "
                                            "taken together)", _non_negative)
    advisor_cpu: float = _setting(0.5, "share of one core the advisor's forecasts may use "
                                       "at most", _share)
    autostop: bool = _setting(False, "ask a running job to stop when its forecast said "
                                     "cannot_win at 2 eval points in a row (unless it was "
                                     "started with autostop false)")
    stale_after: float = _setting(120.0, "seconds without an event or heartbeat after which "
                                         "a running job is shown as stale", _positive)


def _origins(value: str) -> str | None:
    for origin in _split(value):
        if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
            return f"{origin!r} is not an origin like https://host:port"
    return None


def _split(value: str) -> list[str]:
    return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]


def _hosts(value: str) -> str | None:
    for host in _split(value):
        if not all(c.isalnum() or c in ".-:[]_" for c in host):
            return f"{host!r} is not a host name like monitor.example.com (no scheme or port)"
    return None


def is_loopback(host: str) -> bool:
    """Can only this machine reach a server bound to ``host``?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume the network


def _port(value: int) -> str | None:
    return None if 0 <= value < 65536 else "must be a port number (0 picks a free one)"


def _names(value: str) -> list[str]:
    """Comma-separated names, as they are (no URL tidying, unlike :func:`_split`)."""
    return [name.strip() for name in value.split(",") if name.strip()]


def _metric_names(value: str) -> str | None:
    for name in _names(value):
        if len(name) > MAX_METRIC_NAME:
            return f"{name[:40]!r}... is longer than MLflow's {MAX_METRIC_NAME} characters"
    return None


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    """``monitor gateway``: REST API, WebSocket push and the page."""

    host: str = _setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = _setting(8000, "port to listen on", _port)
    token: str | None = _setting(None, "if set, every /api call and /ws must present it "
                                       "(Authorization: Bearer, ?token= or the page's cookie)")
    allowed_origins: str = _setting("", "comma-separated browser origins allowed on /ws "
                                        "besides the server's own", _origins)
    ws_queue: int = _setting(1000, "updates queued per WebSocket client before it is resynced",
                             _positive)
    ws_ping: float = _setting(20.0, "seconds between WebSocket pings; a client silent for "
                                    "as long again is dropped", _positive)
    ws_deflate: bool = _setting(False, "compress WebSocket messages (saves bandwidth to far "
                                       "clients, costs the gateway CPU)")
    api_jobs_max: int = _setting(10_000, "the most jobs GET /api/jobs answers in one list "
                                         "without ?limit=; past it a 413 asks for pages",
                                 _positive)
    allowed_hosts: str = _setting("", "comma-separated host names this gateway answers to (the "
                                      "Host header) besides the loopback ones; empty: only "
                                      "loopback names when bound to loopback, else any",
                                  _hosts)
    mlflow_loss_metrics: str = _setting("", "comma-separated MLflow metric names that are "
                                            "also the training loss (besides loss, "
                                            "train_loss, training_loss)", _metric_names)
    mlflow_eval_loss_metrics: str = _setting("", "comma-separated MLflow metric names that "
                                                 "are also the eval loss (besides eval_loss, "
                                                 "val_loss, validation_loss, eval/loss)",
                                             _metric_names)
    insecure_no_token: bool = _setting(False, "listen on a non-loopback --host without "
                                              "MONITOR_TOKEN: anyone who reaches the port can "
                                              "read every run, archive runs and write events")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_loopback(self.host) and self.token is None and not self.insecure_no_token:
            raise SettingsError(
                f"--host / MONITOR_HOST {self.host!r} is reachable from the network, so set "
                "MONITOR_TOKEN (a long random secret) or it is an open door to every run; "
                "--insecure-no-token / MONITOR_INSECURE_NO_TOKEN=true accepts that risk")

    @property
    def origins(self) -> list[str]:
        return _split(self.allowed_origins)

    @property
    def hosts(self) -> list[str]:
        return [host.lower() for host in _split(self.allowed_hosts)]

    @property
    def mlflow_loss_names(self) -> list[str]:
        return _names(self.mlflow_loss_metrics)

    @property
    def mlflow_eval_loss_names(self) -> list[str]:
        return _names(self.mlflow_eval_loss_metrics)


@dataclass(frozen=True)
class DemoSettings(CommonSettings):
    """``monitor demo``: simulated trainers."""

    runs_per_model: int = _setting(3, "runs per simulated model", _positive)
    epochs: int = _setting(5, "epochs per run", _positive)
    steps_per_epoch: int = _setting(20, "training steps per epoch", _positive)
    step_seconds: float = _setting(0.2, "wall-clock seconds per training step (0: flat out)",
                                   _non_negative)
    seed: int | None = _setting(None, "random seed (same seed, same curves)")
    loop: bool = _setting(False, "keep starting new runs until stopped")


def _user_data_dir(environ: Mapping[str, str]) -> str:
    """The per-user data directory: ``$XDG_DATA_HOME/training-monitor`` when that is an
    absolute path, else ``~/.local/share/training-monitor``."""
    base = environ.get("XDG_DATA_HOME", "")
    if not posixpath.isabs(base):
        home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        base = posixpath.join(home, ".local", "share")
    return posixpath.join(base, "training-monitor")


@dataclass(frozen=True)
class UpSettings(GatewaySettings, WorkerSettings, AdvisorSettings):
    """``monitor up``: worker, gateway and page in one process (and the demo, if asked)."""

    redis_url: str | None = _setting(None, "Redis to use; unset: start an embedded one",  # type: ignore[assignment]
                                     check_redis_url)
    demo: bool = _setting(False, "also run simulated trainers")
    data_dir: str | None = _setting(
        None, "where the embedded Redis keeps its data (append-only file), its port and a "
              "lock; empty: --ephemeral. Only without MONITOR_REDIS_URL",
        from_environ=EnvironDefault(_user_data_dir, "$XDG_DATA_HOME/training-monitor or "
                                    "~/.local/share/training-monitor"))
    ephemeral: bool = _setting(False, "run the embedded Redis in a temporary directory "
                                      "deleted on exit, keeping nothing. Only without "
                                      "MONITOR_REDIS_URL")

    @property
    def persistent_dir(self) -> str | None:
        """The data directory of the embedded Redis, or None when it keeps nothing."""
        return None if self.ephemeral or not self.data_dir else self.data_dir


SETTINGS_CLASSES: tuple[type[CommonSettings], ...] = (WorkerSettings, GatewaySettings,
                                                       AdvisorSettings, DemoSettings, UpSettings)


def part(settings: CommonSettings, cls: type[S], **changes: Any) -> S:
    """The settings of one part (worker, gateway) taken from a combined ``settings``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k in names}
    return cls(**{**values, **changes})
S = TypeVar("S", bound=CommonSettings)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def known_env_names() -> set[str]:
    """Every ``MONITOR_*`` variable some process understands (the SDK reads two of them;
    every process reads :data:`monitor.compiled.SWITCH` when it imports the pure core)."""
    names = {env_name(f.name) for cls in SETTINGS_CLASSES for f in dataclasses.fields(cls)}
    return names | {compiled.SWITCH}


def check_environ(environ: Mapping[str, str]) -> None:
    """Refuse ``MONITOR_*`` variables no process understands (a typo must not pass silently),
    and a :data:`monitor.compiled.SWITCH` other than 0 or 1."""
    known = known_env_names()
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(
            f"unknown setting {unknown[0]} (known: {', '.join(sorted(known))})"
        )
    switch = environ.get(compiled.SWITCH)  # (read when the package is imported, as "0" or not)
    if switch not in (None, "0", "1"):
        raise SettingsError(f"{compiled.SWITCH}={switch!r}: must be one of 0, 1")


def _parse(text: str, kind: Any, where: str) -> Any:
    """Turn one string from the environment or a flag into a value of ``kind``."""
    if kind in (int, int | None):
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{where}: expected an integer, got {text!r}") from None
    if kind in (float, float | None):
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{where}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{where}: expected a finite number, got {text!r}")
        return value
    if kind == str | None:
        return text or None  # an empty variable means "not set"
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{where}: expected true or false, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser, cls: type[CommonSettings]) -> None:
    """One flag per setting of ``cls``, with its variable and default in the help."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        from_environ = f.metadata["from_environ"]
        default = from_environ.text if from_environ is not None else repr(f.default)
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}, default {default}]"
        if hints[f.name] is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action="store_const",
                                const="true", default=None, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar="VALUE",
                                help=help_text)


def load(cls: type[S], flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> S:
    """Build settings of ``cls`` from ``flags`` (strings or None) over ``environ`` over defaults."""
    flags = flags or {}
    environ = environ if environ is not None else {}
    check_environ(environ)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw, where = flags.get(f.name), flag_name(f.name)
        if raw is None and env_name(f.name) in environ:
            raw, where = environ[env_name(f.name)], env_name(f.name)
        if raw is None:
            if f.metadata["from_environ"] is not None:
                values[f.name] = f.metadata["from_environ"].compute(environ)
            continue
        value = _parse(str(raw), hints[f.name], where)
        check = f.metadata["check"]
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise SettingsError(f"{where}={raw!r}: {problem}")
        values[f.name] = value
    return cls(**values)


def configure_logging(settings: CommonSettings) -> None:
    """One line per record on stderr, at the configured level."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
