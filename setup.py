"""Compiles the worker's hot path with mypyc where it can (monitor/compiled.py says which
modules and why); everything else about the package is in pyproject.toml.

Without a C compiler, with a type error mypyc refuses, or with ``MONITOR_COMPILED=0`` set,
the install keeps the source only (and removes what an earlier install compiled in this
directory) and says so: the same code, slower. mypyc runs only when extensions are built,
once per build.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

HERE = Path(__file__).resolve().parent


def _compiled_module() -> Any:
    """monitor/compiled.py, read by its path (the package is not installed yet)."""
    path = HERE / "monitor" / "compiled.py"
    spec = importlib.util.spec_from_file_location("_monitor_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPILED = _compiled_module()


class NotCompiled(Exception):
    pass


def _say(message: str) -> None:
    print(f"training-monitor: {message}", file=sys.stderr)


@functools.cache  # build_ext is set up several times in one build: mypyc runs once
def _extensions() -> tuple[list[Extension], dict[str, str]]:
    """mypyc's extensions for the modules, and the digests of the sources it read."""
    if os.environ.get(COMPILED.SWITCH) == "0":
        raise NotCompiled(f"{COMPILED.SWITCH}=0")
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        raise NotCompiled(repr(error)) from error
    record = COMPILED.source_digests(HERE)
    paths = [str(COMPILED.source(module, HERE)) for module in COMPILED.MODULES]
    try:
        # (errors in what they import but is not compiled are not this build's to refuse)
        return mypycify(["--follow-imports=silent", *paths], opt_level="3",
                        group_name=COMPILED.GROUP.removesuffix("__mypyc"),
                        target_dir=str(HERE / "build")), record
    except SystemExit as error:  # mypyc exits on a type error
        raise NotCompiled(f"mypyc refused it: {error}") from error


def _remove_compiled() -> None:
    """What an earlier install compiled in this directory, and its record."""
    for part in (*COMPILED.MODULES, COMPILED.GROUP):
        while (built := COMPILED.compiled_file(part, HERE)) is not None:
            built.unlink()
    (HERE / COMPILED.RECORD).unlink(missing_ok=True)


METADATA_ONLY = {"egg_info", "dist_info", "sdist"}  # what pip asks before building


class BuildOrKeepSource(build_ext):
    """Builds the compiled modules, or keeps the source when it cannot."""

    def finalize_options(self) -> None:
        if set(self.distribution.commands) <= METADATA_ONLY:
            self.distribution.ext_modules = []  # (egg_info lists the sources: none to build)
        else:
            try:
                self.distribution.ext_modules = _extensions()[0]
            except NotCompiled as error:
                self._keep_source(error)
        super().finalize_options()

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as error:  # no C compiler
            self._keep_source(error)
            return
        if self.inplace and self.extensions:  # (an editable install: compiled in place)
            COMPILED.write_record(_extensions()[1], HERE)

    def _keep_source(self, error: Exception) -> None:
        self.distribution.ext_modules = []
        self.extensions = []
        _remove_compiled()
        _say(f"not compiled ({error}); the source runs, slower")


# A stand-in until build_ext asks mypyc for the real ones (it makes the wheel platform's).
setup(ext_modules=[Extension(COMPILED.GROUP, sources=[])],
      cmdclass={"build_ext": BuildOrKeepSource})
