"""Helpers shared by the benchmarks: the machine line, Redis prefixes, /proc readings, tables."""

from __future__ import annotations

import os
import platform
import secrets
import statistics
from collections.abc import Sequence

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The Redis to benchmark against: ``MONITOR_REDIS_URL`` if set, else the local default."""
    return os.environ.get("MONITOR_REDIS_URL") or DEFAULT_REDIS_URL


def unique_prefix(label: str) -> str:
    """A key prefix no one else uses, e.g. ``bench:3f9a1c2b:1k:``."""
    return f"bench:{secrets.token_hex(4)}:{label}:"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Remove every key under ``prefix`` (UNLINK, in batches); returns how many."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def used_memory_mb(client: redis.Redis) -> float:
    """Redis ``used_memory`` in MB (the whole server, not only our prefix)."""
    return int(client.info("memory")["used_memory"]) / 1e6


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU time the Redis server has used so far (user + system, all its threads)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(client: redis.Redis) -> str:
    """CPU model, cores, Python and Redis versions, as one Markdown line."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server = client.info("server")
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), "
            f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"Redis {server['redis_version']}, {platform.system()} {platform.release()}")


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a running process (``VmHWM``), in MB."""
    return _status_kb(pid, "VmHWM") * 1024 / 1e6


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        # The command name may contain spaces; the fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          align: Sequence[str] | None = None) -> str:
    """A Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column (default: right)."""
    align = align or ["r"] * len(headers)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
