"""The pure core, compiled to C with mypyc: which modules, and whether they are in use.

An install compiles :data:`MODULES` (``setup.py``); Python then imports each from its
compiled file (``rules.cpython-311-x86_64-linux-gnu.so`` beside ``rules.py``), which runs
the same code in about 0.8x the CPU. The source is the truth: where no C compiler was at
hand the install keeps the source, and the source is what runs when:

- ``MONITOR_COMPILED=0`` is set (to read Python frames in a profiler or a traceback, or to
  compare the two in one benchmark run);
- in a source checkout, a module's source changed after it was compiled (an edit, a
  ``git checkout``): a warning says to install again (``pip install -e .``).

The modules are taken all compiled or all from source, never mixed: compiled modules call
each other directly. ``monitor/__init__.py`` calls :func:`choose` before the package
imports anything else, and ``worker/__init__.py`` imports ``monitor`` first. This module
imports only the standard library: ``setup.py`` reads it before anything is installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MODULES = (
    "monitor.rules",
    "monitor.seen",
    "monitor.history",
    "monitor.keys",
    "worker.batch",
    "worker.order",
    "worker.hot",
    "worker.moves",
)
"""Compiled: the pure modules of the worker's hot path (no I/O, no async)."""

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


def stale(root: Path = ROOT, modules: Sequence[str] = MODULES) -> list[str]:
    """In a source checkout (``pyproject.toml`` beside the packages), the compiled modules
    whose source changed after they were compiled; elsewhere (an installed wheel, whose
    files' times say nothing) none."""
    if not (root / "pyproject.toml").exists():
        return []
    out = []
    for module in modules:
        built = compiled_file(module, root)
        if built is not None and source(module, root).stat().st_mtime > built.stat().st_mtime:
            out.append(module)
    return out


def why_source(environ: dict[str, str] | os._Environ[str], root: Path = ROOT,
               modules: Sequence[str] = MODULES) -> str | None:
    """Why the modules must run from source although compiled files exist; None when the
    compiled files are to be used (or there are none)."""
    built = [module for module in modules if compiled_file(module, root) is not None]
    if not built:
        return None
    if environ.get(SWITCH) == "0":
        return f"{SWITCH}=0"
    if len(built) < len(modules):
        missing = sorted(set(modules) - set(built))
        return f"the install compiled only some of them (not {', '.join(missing)})"
    if changed := stale(root, modules):
        return (f"{', '.join(changed)} changed after it was compiled: run `pip install -e .` "
                f"again to compile it")
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
    _decided = reason is None and compiled_file(MODULES[0]) is not None
    if reason is None:
        return
    sys.meta_path.insert(0, _FromSource())
    if not reason.startswith(SWITCH):
        warnings.warn(f"running the pure core from source, slower: {reason}",
                      RuntimeWarning, stacklevel=2)


def in_use() -> bool:
    """Does this process run the compiled modules (False: their source)?"""
    return bool(_decided)
