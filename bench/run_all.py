"""Run every benchmark of the project and write one Markdown report to ``bench/results.md``.

    .venv/bin/python -m bench.run_all [--quick] [--skip NAME,...]    (or: python -m bench)

Each benchmark runs as its own subprocess (``python -m bench.<name> [--quick]``), one after
the other; its stdout (a Markdown section) goes into the report, under a header with the
machine, the date and the command; the report opens with a summary of the key figures each
benchmark recorded (``bench.common.headline``). ``--quick`` passes ``--quick`` to each and
runs the peer comparison and the MLflow one (``bench.mlflow_compare``) only with the peers
already installed (``bench.peers --no-install``), to stay near 2 minutes (about 1 on a normal host of the 2-core class, 2 on a
slow one, MLflow's server start being the largest part); without it the peers are installed
into their own venvs (under ``~/.cache/monitor-bench-peers``) if missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import HEADLINES_ENV, machine_line, redis_url, table

BENCHES = ["worker_throughput", "worker_cpu", "worker_memory", "versus", "latency", "fanout", "slow_clients",
           "page_scale", "gateway_scale",
           "forecast_backtest", "forecast_pipeline", "stop_latency", "scale_out", "peers",
           "mlflow_compare"]
RESULTS = Path(__file__).with_name("results.md")
TIMEOUT, QUICK_TIMEOUT = 1800.0, 300.0  # per benchmark, seconds: a safety net, not a target


def read_headlines(path: Path) -> list[dict[str, Any]]:
    """The key figures the benchmarks recorded (``bench.common.headline``); removes the file."""
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    finally:
        path.unlink(missing_ok=True)


def summary_table(headlines: list[dict[str, Any]]) -> str:
    if not headlines:
        return "(no benchmark recorded a figure)"
    return table(["benchmark", "what", "measured", "bar / goal", "verdict"],
                 [[f"`bench.{h['benchmark']}`", h["what"], h["measured"], h["target"],
                   h["verdict"]] for h in headlines],
                 align=["l", "l", "r", "l", "l"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to each; peers only if already installed")
    parser.add_argument("--skip", default="", help=f"comma-separated, of: {', '.join(BENCHES)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the report's path")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    client = redis.Redis.from_url(redis_url())
    machine = machine_line(client)
    client.close()
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        f" --skip {args.skip}" if skip else "")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sections: list[str] = []
    summary: list[str] = []
    t_all = time.perf_counter()
    fd, headlines_path = tempfile.mkstemp(prefix="bench-headlines-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ, **{HEADLINES_ENV: headlines_path})
    for name in BENCHES:
        if name in skip:
            summary.append(f"| `bench.{name}` | skipped (--skip) | – |")
            continue
        cmd = [sys.executable, "-m", f"bench.{name}"]
        if args.quick:
            cmd.append("--quick")
            if name == "peers":
                cmd.append("--no-install")
        shown = " ".join(["python", "-m", f"bench.{name}", *cmd[3:]])
        print(f"running: {shown}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                               timeout=QUICK_TIMEOUT if args.quick else TIMEOUT)
            out, status = r.stdout.strip(), ("ok" if r.returncode == 0
                                             else f"exit {r.returncode}")
            err = r.stderr.strip()
        except subprocess.TimeoutExpired as e:
            out = (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")).strip()
            status, err = f"timed out after {e.timeout:.0f}s", ""
        seconds = time.perf_counter() - t0
        summary.append(f"| `{shown}` | {status} | {seconds:.0f} |")
        section = out or f"## bench.{name}\n\n(no output)"
        if status != "ok":
            tail = "\n".join(err.splitlines()[-10:])
            section += f"\n\n**`{shown}`: {status}.**" + (f"\n\n```\n{tail}\n```" if tail else "")
        sections.append(section)
        print(f"  {status} in {seconds:.0f}s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    headlines = read_headlines(Path(headlines_path))

    header = [
        "# Benchmark results", "",
        machine, "",
        f"Run {started} with `{command}` ({'quick mode' if args.quick else 'full'}), "
        f"total {total:.0f}s."
        + (" Quick mode: the peer comparison uses only peers already installed (it skips "
           "installing them) and fewer steps." if args.quick else ""), "",
        "## Summary", "",
        summary_table(headlines), "",
        "| benchmark | status | seconds |", "| :--- | :--- | ---: |", *summary, "",
    ]
    document = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    args.output.write_text(document)
    print(document)
    print(f"written to {args.output}", file=sys.stderr)
    return 0 if all("| ok |" in row or "skipped" in row for row in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
