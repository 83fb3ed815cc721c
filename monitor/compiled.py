"""The worker's hot path, compiled to C with mypyc: which modules, and whether they run.

An install compiles :data:`MODULES` (``setup.py``): all their code goes into one library,
:data:`GROUP`, and each module gets a small file that loads it
(``rules.cpython-311-x86_64-linux-gnu.so`` beside ``rules.py``). Python then imports those,
which run the same code in about 0.8x the CPU. The source is the truth: where no C compiler
was at hand the install keeps the source, and the source is what runs when

- ``MONITOR_COMPILED=0`` is set (to read Python frames in a profiler or a traceback, or to
  compare the two in one benchmark run);
- the compiled files are incomplete (a module's file, or the library, is missing);
- in a source checkout, a file the compiled code was built from changed since (an edit, a
  ``git checkout`` to other content): an editable install records the digest of every
  source file mypyc read (:data:`RECORD`), and a warning says to install again
  (``pip install -e .``).

The modules are taken all compiled or all from source, never mixed: compiled modules call
each other directly. ``monitor/__init__.py`` calls :func:`choose` before the package
imports anything else, and ``worker/__init__.py`` imports ``monitor`` first. This module
imports only the standard library: ``setup.py`` reads it before anything is installed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

MODULES = (
    "monitor.rules",
    "monitor.seen",
    "monitor.history",
    "monitor.keys",
    "monitor.records",
    "worker.batch",
    "worker.order",
    "worker.hot",
    "worker.moves",
    "worker.resp",
    "worker.writes",
)
"""Compiled: the modules of the worker's hot path that mypyc takes as they are (the fold,
the batch and its commit, and what they use; no async generators)."""

GROUP = "monitor_core__mypyc"  # the library of their compiled code, beside the packages
RECORD = Path("build") / "compiled-sources.json"  # in a checkout: path -> sha256, as built
SWITCH = "MONITOR_COMPILED"
ROOT = Path(__file__).resolve().parent.parent  # holds monitor/ and worker/


def source(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def compiled_file(module: str, root: Path = ROOT) -> Path | None:
    """The module's compiled file, if the install made one."""
    py = source(module, root)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = py.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def sources_read(root: Path = ROOT, modules: Sequence[str] = MODULES) -> list[str]:
    """The source files mypyc reads to compile ``modules``, relative to ``root``: theirs and
    every file of the project they import, directly or not (whose types they build in)."""
    todo = [source(module, root) for module in modules]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                base = root.joinpath(*name.split("."))
                todo += [base.with_suffix(".py"), base / "__init__.py"]
    return sorted(str(path.relative_to(root)) for path in seen)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def source_digests(root: Path = ROOT, modules: Sequence[str] = MODULES) -> dict[str, str]:
    """The digest of each file of :func:`sources_read`, as it is now."""
    return {path: _digest(root / path) for path in sources_read(root, modules)}


def write_record(record: dict[str, str], root: Path = ROOT) -> None:
    """Say what the compiled files in ``root`` were built from (:func:`source_digests`,
    taken before compiling: an edit made while it compiles shows as a change)."""
    (root / RECORD).parent.mkdir(exist_ok=True)
    (root / RECORD).write_text(json.dumps(record, indent=1) + "\n")


def changed_sources(root: Path = ROOT) -> list[str] | None:
    """The files of :data:`RECORD` whose content changed since; None without a record."""
    try:
        record = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return [path for path, digest in record.items() if _digest(root / path) != digest]


def why_source(environ: Mapping[str, str], root: Path = ROOT,
               modules: Sequence[str] = MODULES) -> str | None:
    """Why the modules must run from source although compiled files exist; None when the
    compiled files are to be used (or there are none)."""
    parts = (*modules, GROUP)
    built = [part for part in parts if compiled_file(part, root) is not None]
    if not built:
        return None
    if environ.get(SWITCH) == "0":
        return f"{SWITCH}=0"
    if len(built) < len(parts):
        missing = sorted(set(parts) - set(built))
        return f"the compiled files are incomplete (none for {', '.join(missing)})"
    if not (root / "pyproject.toml").exists():
        return None  # installed from a wheel: no source to go out of date
    changed = changed_sources(root)
    if changed is None:
        return f"no {RECORD} says what they were compiled from: run `pip install -e .` again"
    if changed:
        return (f"{', '.join(changed)} changed since the install compiled it: run "
                f"`pip install -e .` again")
    return None


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds :data:`MODULES` as their ``.py`` files, ahead of every other finder."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


_decided: bool | None = None  # once chosen: are the compiled modules in use?


def choose() -> None:
    """Decide, once per process, between the compiled modules and their source (see the
    module's docstring); the source comes with a warning unless ``MONITOR_COMPILED=0``
    asked for it."""
    global _decided
    if _decided is not None:
        return
    reason = why_source(os.environ)
    _decided = reason is None and compiled_file(GROUP) is not None
    if reason is None:
        return
    sys.meta_path.insert(0, _FromSource())
    if not reason.startswith(SWITCH):
        warnings.warn(f"running the pure core from source, slower: {reason}",
                      RuntimeWarning, stacklevel=2)


def in_use() -> bool:
    """Does this process run the compiled modules (False: their source)?"""
    return bool(_decided)
