"""The pure parts of the benchmarks: parsing other tools' output and judging against the bars."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import common, dashboards, run_all
from bench.peers import _visibility, verdicts
from bench.worker_throughput import parse_benchmark_csv, redis_benchmark_args

CSV = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
       '"p99_latency_ms","max_latency_ms"\n'
       '"XADD s * data {"type":"metrics","loss":0.5,"eval_loss":0.4}","231481.47","0.275",'
       '"0.088","0.167","0.215","0.311","6.751"\n')


def test_parse_benchmark_csv_reads_numbers_from_the_right_past_an_unescaped_name() -> None:
    assert parse_benchmark_csv(CSV) == {
        "rps": 231481.47, "avg_latency_ms": 0.275, "min_latency_ms": 0.088,
        "p50_latency_ms": 0.167, "p95_latency_ms": 0.215, "p99_latency_ms": 0.311,
        "max_latency_ms": 6.751,
    }


@pytest.mark.parametrize("stdout", ["", '"test","rps"\n', "ERR unknown command\n",
                                    '"XADD","a","b","c","d","e","f","g"\n'])
def test_parse_benchmark_csv_without_a_result_row_is_none(stdout: str) -> None:
    assert parse_benchmark_csv(stdout) is None


@pytest.mark.parametrize(("url", "args"), [
    ("redis://127.0.0.1:6379/0", ["-h", "127.0.0.1", "-p", "6379"]),
    ("redis://localhost", ["-h", "localhost", "-p", "6379"]),
    ("redis://:s3cret@10.0.0.2:7000/3", ["-h", "10.0.0.2", "-p", "7000", "-a", "s3cret",
                                          "--dbnum", "3"]),
])
def test_redis_benchmark_args_from_url(url: str, args: list[str]) -> None:
    assert redis_benchmark_args(url) == args


def _result(rate: float, p50: float | None, p95: float | None) -> dict[str, Any]:
    vis = {"samples": 6, "seen": 6 if p50 is not None else 0, "polls": 10, "p50_ms": p50,
           "p95_ms": p95, "max_ms": p95, "steps_per_s": 200.0}
    return {"percall": {"events": int(rate), "calls_s": 1.0, "flushed_s": 2.0},
            "visible_paced": vis, "visible_burst": dict(vis, steps_per_s=90_000.0)}


def test_verdicts_judge_this_project_against_each_bar() -> None:
    results = {"monitor": _result(500_000, 3.0, 4.9), "trackio": _result(130_000, 520.0, 530.0),
               "mlflow": _result(100, 30.0, 38.0)}
    assert verdicts(results, {"monitor": None, "trackio": 1000.0, "mlflow": None}) == [
        "log() rate 500,000 events/s vs Trackio's 130,000 (bar: at or above it): met",
        "visible to a WebSocket subscriber, paced: p95 4.9 ms (bar < 10 ms): met",
        "below every peer's own API read (fastest: mlflow, p50 30.0 ms; ours p95 4.9 ms): met",
        ("vs the fastest peer dashboard refresh (trackio, every 1,000 ms): 204x below it "
        "(bar ≥ 100x): met"),
        ("burst: 90,000 steps/s logged, the last new best visible p95 4.9 ms after its call (it "
        "waits behind the steps logged before it)"),
    ]


def test_verdicts_say_not_met() -> None:
    results = {"monitor": _result(100_000, 12.0, 15.0), "trackio": _result(130_000, 10.0, 11.0)}
    lines = verdicts(results, {"trackio": 1000.0})
    assert lines[:4] == [
        "log() rate 100,000 events/s vs Trackio's 130,000 (bar: at or above it): NOT met",
        "visible to a WebSocket subscriber, paced: p95 15.0 ms (bar < 10 ms): NOT met",
        ("below every peer's own API read (fastest: trackio, p50 10.0 ms; ours p95 15.0 ms): "
        "NOT met"),
        ("vs the fastest peer dashboard refresh (trackio, every 1,000 ms): 67x below it "
        "(bar ≥ 100x): NOT met"),
    ]


def test_visibility_cell() -> None:
    assert _visibility(_result(1, 3.04, 4.96)["visible_paced"]) == (
        "3.0 / 5.0 (max 5; 6 of 6 seen; 200 steps/s)")
    assert _visibility(_result(1, None, None)["visible_paced"]) == "none of 6 seen"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_mlflow_refresh_follows_the_webpack_import_to_the_constant(tmp_path: Path) -> None:
    js = "mlflow/server/js/build/static/js"
    _write(tmp_path, f"{js}/3878.abc.chunk.js",
           '(self.w=self.w||[]).push([[3878],{11(e,t,n){var ha=n(54919);function f(){'
           'fetchRuns(x,{isAutoRefreshing:!0});window.clearTimeout(c.current),'
           'c.current=window.setTimeout(s,ha.t4)}},12(e,t,n){var q=1}}]);')
    _write(tmp_path, f"{js}/4751.def.chunk.js",
           '(self.w=self.w||[]).push([[4751],{54919(e,t,n){n.d(t,{TB:()=>y,t4:()=>m});'
           'const y=5,m=3e4,z=2},54920(e,t,n){var m=1}}]);')
    _write(tmp_path, f"{js}/main.123.js",
           '{1395(e,t,n){const a=["selectedColumns"];var d={groupBy:null,'
           'autoRefreshEnabled:!0,other:1}}}')
    found = dashboards.mlflow(tmp_path)
    assert found.interval_ms == 30_000
    assert found.note == (
        f"polling: the runs table re-fetches every 30 s: `window.setTimeout(s,ha.t4)` in "
        f"`{js}/3878.abc.chunk.js`, `ha=n(54919)` → module 54919 in `{js}/4751.def.chunk.js`: "
        f"`m=3e4`; auto-refresh on by default: `autoRefreshEnabled:!0` in `{js}/main.123.js` "
        f"(the experiment page's initial state)")


def test_mlflow_refresh_off_by_default_has_no_interval(tmp_path: Path) -> None:
    js = "mlflow/server/js/build/static/js"
    _write(tmp_path, f"{js}/1.chunk.js",
           '{7(e,t,n){var ha=n(8);({isAutoRefreshing:!0});window.setTimeout(s,ha.t4)},'
           '8(e,t,n){n.d(t,{t4:()=>m});const m=1e4}}')
    _write(tmp_path, f"{js}/main.1.js", '{9(e,t,n){var d={selectedColumns:[],'
                                        'autoRefreshEnabled:!1}}}')
    found = dashboards.mlflow(tmp_path)
    assert found.interval_ms is None
    assert "auto-refresh off by default" in found.note


def test_trackio_refresh_reads_the_local_interval_and_the_write_interval(tmp_path: Path) -> None:
    _write(tmp_path, "trackio/frontend/dist/assets/index-X.js",
           "function zO(){return 1}function jO(){return zO()?2500:1e3}")
    _write(tmp_path, "trackio/run.py", "import time\nBATCH_SEND_INTERVAL = 0.5\n")
    found = dashboards.trackio(tmp_path)
    assert found.interval_ms == 1000
    assert found.note == (
        "polling: the page polls with `setInterval` every 1 s locally (2.5 s on a `.hf.space` "
        "host): `function jO(){return zO()?2500:1e3}` in "
        "`trackio/frontend/dist/assets/index-X.js`; `trackio.log` queues, and a thread writes "
        "the queue to SQLite every 0.5 s: `BATCH_SEND_INTERVAL = 0.5` in `trackio/run.py`")


def test_a_missing_bundle_is_said_not_guessed(tmp_path: Path) -> None:
    assert dashboards.mlflow(tmp_path) == dashboards.Refresh("MLflow's UI bundle not found", None)
    assert dashboards.trackio(tmp_path).interval_ms is None


def test_headlines_are_collected_into_the_summary_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "headlines.jsonl"
    monkeypatch.setenv(common.HEADLINES_ENV, str(path))
    monkeypatch.setattr(sys, "argv", ["/x/bench/latency.py"])
    common.headline("p99 ms", "41.0", "< 50", common.verdict(True, False))
    common.headline("clients", "1,000 of 1,000")
    assert run_all.summary_table(run_all.read_headlines(path)).splitlines() == [
        "| benchmark | what | measured | bar / goal | verdict |",
        "| :--- | :--- | ---: | :--- | :--- |",
        "| `bench.latency` | p99 ms | 41.0 | < 50 | bar met, goal not met |",
        "| `bench.latency` | clients | 1,000 of 1,000 |  |  |",
    ]
    assert not path.exists()


def test_headline_without_the_variable_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.HEADLINES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    common.headline("x", "1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(600)
def test_redis_work_counts_redis_instructions_per_event_and_where_they_go(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real count: a private redis-server and the worker under callgrind while the worker
    applies 400 events."""
    from bench import redis_work
    if not all(shutil.which(tool) for tool in ("valgrind", "callgrind_control",
                                               "callgrind_annotate")):
        if os.environ.get("REQUIRE_VALGRIND"):  # .ci/run installs it: this must run
            pytest.fail("bench.redis_work needs valgrind; REQUIRE_VALGRIND is set")
        pytest.skip("bench.redis_work needs valgrind (apt install valgrind)")
    assert redis_work.main(["--jobs", "200", "--worker"]) == 0
    out = capsys.readouterr().out
    header, = [line for line in out.splitlines() if line.startswith("| jobs |")]
    row, = [line for line in out.splitlines() if line.startswith("| 200 |")]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [int(c.strip().replace(",", "")) for c in row.strip("|").split("|")],
                     strict=True))
    assert cells["events"] == 400
    assert 5_000 < cells["Redis instructions/event"] < 1_000_000
    assert 10_000 < cells["worker instructions/event"] < 5_000_000
    parts = [v for k, v in cells.items()
             if k.endswith(" /event")]  # the commands' and the rest: the whole count
    assert sum(parts) == pytest.approx(cells["Redis instructions/event"], abs=len(parts))
    for command in ("ZADD", "HSET", "RPUSH", "XREADGROUP", "reading requests"):
        assert cells[f"{command} /event"] > 0, command


@pytest.mark.timeout(600)
def test_redis_work_counts_another_revisions_worker(capsys: pytest.CaptureFixture[str]) -> None:
    """``--rev``: the baseline's worker (extracted from git, run from its source) under the
    same count; it wrote its Redis state its own way (Lua scripts: "the rest" of the count)."""
    from bench import redis_work, versus
    if not all(shutil.which(tool) for tool in ("valgrind", "callgrind_control",
                                               "callgrind_annotate")):
        if os.environ.get("REQUIRE_VALGRIND"):
            pytest.fail("bench.redis_work needs valgrind; REQUIRE_VALGRIND is set")
        pytest.skip("bench.redis_work needs valgrind (apt install valgrind)")
    assert redis_work.main(["--jobs", "200", "--rev", versus.BASELINE]) == 0
    out = capsys.readouterr().out
    assert f"while one `monitor worker` of {versus.BASELINE} (" in out
    row, = [line for line in out.splitlines() if line.startswith("| 200 |")]
    cells = [int(c.strip().replace(",", "")) for c in row.strip("|").split("|")]
    assert cells[1] == 400 and 5_000 < cells[2] < 1_000_000


def test_redis_work_names_a_revision_it_cannot_find() -> None:
    from bench import redis_work
    with pytest.raises(SystemExit, match="^bench.redis_work: 'no-such-rev' is not a commit"):
        redis_work.main(["--jobs", "200", "--rev", "no-such-rev"])


@pytest.mark.timeout(300)
def test_versus_runs_this_worker_and_the_baseline_taking_turns_on_one_stream(
        redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Real workers: this tree's and the baseline's (extracted from git, run from its
    source) each apply the same 400 events, twice, and the tables give both and the ratio."""
    from bench import versus
    monkeypatch.setenv("MONITOR_REDIS_URL", redis_url)
    assert versus.main(["--jobs", "200", "--events", "400", "--repeat", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out if line.startswith("| 200 |")]
    runs, ratios = rows[:2], rows[2:]
    assert [row[1] for row in runs] == [versus.BASELINE, "this tree"]
    for row in runs:
        assert len(row[5].split(", ")) == 2  # each run's events/s: two runs each
        assert float(row[2].replace(",", "")) > 0
    assert out[out.index("| jobs | events/s ratio | worker CPU ratio | Redis CPU ratio | "
                         "each turn's events/s ratio |") + 2] == "| " + " | ".join(ratios[0]) + " |"
    assert all(cell.endswith("x") for cell in ratios[0][1:4])
    assert len(ratios[0][4].split(", ")) == 2 and ratios[0][4].endswith("x")
    assert f"## This worker against {versus.BASELINE}" in out


def test_versus_refuses_a_revision_the_checkout_does_not_have(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench import versus
    with pytest.raises(SystemExit) as raised:
        versus.main(["no-such-revision-0000", "--quick"])
    assert str(raised.value).startswith("bench.versus: 'no-such-revision-0000' is not a "
                                        "commit of the git checkout at ")
