"""Compiles the worker's pure core with mypyc where it can (monitor/compiled.py says which
modules and why); everything else about the package is in pyproject.toml.

Without a C compiler, or with ``MONITOR_COMPILED=0`` set, the install keeps the source only
and says so: the same code, slower.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
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


def _say(message: str) -> None:
    print(f"training-monitor: {message}", file=sys.stderr)


class BuildOrKeepSource(build_ext):
    """Builds the compiled modules; when that fails (no C compiler), removes any it made and
    keeps the source."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as error:
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _say(f"not compiled ({type(error).__name__}: {error}); the source runs, slower")


def extensions() -> list[Any]:
    compiled = _compiled_module()
    if os.environ.get(compiled.SWITCH) == "0":
        _say(f"{compiled.SWITCH}=0: the pure core is not compiled")
        return []
    paths = [str(compiled.source(module, Path("."))) for module in compiled.MODULES]
    try:
        from mypyc.build import mypycify

        return mypycify(paths, opt_level="3", group_name="monitor_core")
    except (ImportError, SystemExit) as error:  # mypyc exits on a type error
        _say(f"not compiled ({error!r}); the source runs, slower")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildOrKeepSource})
