"""The compiled pure core (monitor/compiled.py): it runs where the install compiled it, the
source runs when asked or when the compiled files are out of date, and both fold a stream
into the same bytes."""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from monitor import compiled
from monitor.rules import Board

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = ("pkg.a", "pkg.b")


def test_the_pure_core_runs_compiled_where_the_install_compiled_it() -> None:
    built = [m for m in compiled.MODULES if compiled.compiled_file(m) is not None]
    asked = os.environ.get(compiled.SWITCH) == "0"
    if (not built or asked) and not os.environ.get("REQUIRE_COMPILED"):  # .ci/run sets it
        pytest.skip(f"the pure core runs from source here: {_why()}")
    assert compiled.in_use(), _why()
    for module in (*compiled.MODULES, compiled.GROUP):
        __import__(module)
        assert sys.modules[module].__file__ == str(compiled.compiled_file(module))


def _why() -> str:
    return compiled.why_source(os.environ) or "this install did not compile it (no C compiler?)"


def test_the_sources_read_are_the_modules_and_what_they_import_of_the_project() -> None:
    read = compiled.sources_read()
    assert {"monitor/rules.py", "worker/batch.py", "worker/moves.py"} <= set(read)
    assert {"monitor/decoded.py", "monitor/events.py"} <= set(read)  # types built in
    assert not [path for path in read if path.startswith(("web/", "monitor/cli/"))]


def _tree(tmp_path: Path, *, checkout: bool = True) -> Path:
    """A package ``pkg``: modules a and b compiled (empty stand-ins), a importing c."""
    (tmp_path / "pkg").mkdir()
    if checkout:
        (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.c import helper\n")
    (tmp_path / "pkg" / "b.py").write_text("import json\n")
    (tmp_path / "pkg" / "c.py").write_text("def helper() -> None: ...\n")
    for part in ("pkg/a", "pkg/b", compiled.GROUP):
        (tmp_path / f"{part}{SUFFIX}").write_bytes(b"")
    compiled.write_record(compiled.source_digests(tmp_path, MODULES), tmp_path)
    return tmp_path


def test_what_the_install_compiled_runs_while_its_sources_are_as_they_were(
        tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert compiled.sources_read(root, MODULES) == ["pkg/a.py", "pkg/b.py", "pkg/c.py"]
    later = time.time() + 60  # rewritten as it was, as `git checkout` back and forth does
    os.utime(root / "pkg" / "b.py", (later, later))
    assert compiled.why_source({}, root, MODULES) is None


def test_none_compiled_is_no_reason_to_warn(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    for part in ("pkg/a", "pkg/b", compiled.GROUP):
        (root / f"{part}{SUFFIX}").unlink()
    assert compiled.why_source({}, root, MODULES) is None


def test_the_source_runs_when_asked(tmp_path: Path) -> None:
    reason = compiled.why_source({"MONITOR_COMPILED": "0"}, _tree(tmp_path), MODULES)
    assert reason == "MONITOR_COMPILED=0"


@pytest.mark.parametrize(("path", "edited"), [
    ("pkg/b.py", "import json  # edited\n"),  # a compiled module
    ("pkg/c.py", "def helper() -> int: ...\n"),  # a module a compiled one imports
])
def test_a_source_edited_since_the_install_in_a_checkout_runs_from_source(
        tmp_path: Path, path: str, edited: str) -> None:
    root = _tree(tmp_path)
    (root / path).write_text(edited)
    assert compiled.why_source({}, root, MODULES) == (
        f"{path} changed since the install compiled it: run `pip install -e .` again")


def test_compiled_files_without_a_record_of_their_sources_run_from_source(
        tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / compiled.RECORD).unlink()
    assert compiled.why_source({}, root, MODULES) == (
        "no build/compiled-sources.json says what they were compiled from: run "
        "`pip install -e .` again")


def test_outside_a_checkout_there_is_no_source_to_go_out_of_date(tmp_path: Path) -> None:
    root = _tree(tmp_path, checkout=False)  # as installed from a wheel
    (root / "pkg" / "b.py").write_text("import os\n")
    assert compiled.why_source({}, root, MODULES) is None


@pytest.mark.parametrize("missing", ["pkg/a", compiled.GROUP])
def test_incomplete_compiled_files_run_every_module_from_source(tmp_path: Path,
                                                               missing: str) -> None:
    root = _tree(tmp_path)
    (root / f"{missing}{SUFFIX}").unlink()
    name = missing.replace("/", ".")
    assert compiled.why_source({}, root, MODULES) == (
        f"the compiled files are incomplete (none for {name})")


# Fold bench.workload's stream through every pure step of the worker (bench.worker_cpu's
# transactions) and hash the packed transactions: the bytes the worker would send to Redis.
FOLD_DIGEST = """
import sys
from monitor import compiled
from tests.test_compiled import fold_digest
digest = fold_digest()
print(sorted({sys.modules[m].__file__.rpartition(".")[2] for m in compiled.MODULES
              if m in sys.modules}), digest)
"""


def fold_digest() -> str:
    from bench.worker_cpu import entries_of, transactions
    from bench.workload import Workload

    board = Board()
    digest = hashlib.sha256()
    entries = entries_of(Workload(events=6_000, jobs=600, models=7, concurrency=200))
    for packed in transactions(entries, board, batch=500):
        digest.update(packed)
    digest.update(orjson.dumps(sorted(
        (job.public() | job.private() for job in board.jobs.values()), key=lambda j: j["id"])))
    return digest.hexdigest()


def _without_switch() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != compiled.SWITCH}


def _run_digest(**env: str) -> tuple[str, str]:
    """(the suffixes of the pure core's files, the digest), from a new process."""
    done = subprocess.run([sys.executable, "-c", FOLD_DIGEST], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True,
                          env={**_without_switch(), "PYTHONHASHSEED": "0", **env})  # set order
    files, _, digest = done.stdout.strip().rpartition(" ")
    return files, digest


def test_the_compiled_core_and_its_source_write_the_same_bytes() -> None:
    if not compiled.in_use() and not os.environ.get("REQUIRE_COMPILED"):
        pytest.skip(f"the pure core runs from source here: {_why()}")
    files, from_source = _run_digest(MONITOR_COMPILED="0")
    assert files == "['py']"
    assert _run_digest() == ("['so']", from_source)
