"""How each peer's dashboard refreshes, read from its installed package (stdlib only).

The peers ship minified JavaScript bundles, so each finder locates its code by strings that
survive a rebuild (a query key, a flag name) and follows webpack's module structure
(``ns=n(12345)`` -> module ``12345`` -> export ``t4:()=>m`` -> ``m=3e4``) rather than
minified names or chunk numbers. Each returns a :class:`Refresh`: a note naming the files and
snippets it read, and the fastest interval at which a dashboard left as it opens reloads run
data (None when it pushes, or when nothing was found).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Refresh:
    note: str
    interval_ms: float | None


ID = r"[A-Za-z_$][\w$]*"
NUMBER = r"(\d[\d.]*(?:e\d+)?)"
# A webpack module's header: ,12345(e,t,n){  or  ,12345:function(e,t,n){  or  ,12345:(e,t,n)=>{
MODULE_HEADER = (r"[{,]\s*\"?@ID@\"?\s*(?::\s*function\s*|:\s*)?"
                 r"\(\s*@P@(?:\s*,\s*@P@){0,2}\s*\)\s*(?:=>\s*)?\{").replace("@P@", ID)
ANY_MODULE = re.compile(MODULE_HEADER.replace("@ID@", r"(\d+)"))


@cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _rel(path: Path, site: Path) -> str:
    return path.relative_to(site).as_posix()


def _module_start(text: str, pos: int) -> int:
    """Where the webpack module holding ``pos`` starts."""
    start = 0
    for m in ANY_MODULE.finditer(text, 0, pos):
        start = m.start()
    return start


def _module(files: list[Path], module_id: str) -> tuple[Path, str]:
    header = re.compile(MODULE_HEADER.replace("@ID@", module_id))
    for path in files:
        text = _read(path)
        m = header.search(text)
        if m:
            end = ANY_MODULE.search(text, m.end())
            return path, text[m.start():end.start() if end else len(text)]
    raise LookupError(f"webpack module {module_id} not found")


def _constant(files: list[Path], path: Path, pos: int, ns: str, member: str,
              site: Path) -> tuple[float, str]:
    """The number ``ns.member`` (used at ``pos`` in ``path``) stands for, and where it is set."""
    text = _read(path)
    imports = list(re.finditer(rf"(?<![\w$.]){re.escape(ns)}\s*=\s*{ID}\((\d+)\)",
                               text[_module_start(text, pos):pos]))
    if not imports:
        raise LookupError(f"the import of {ns!r} not found in {path.name}")
    module_id = imports[-1].group(1)
    where, body = _module(files, module_id)
    export = re.search(rf"(?<![\w$]){re.escape(member)}\s*:\s*\(\)\s*=>\s*({ID})", body)
    if not export:
        raise LookupError(f"export {member!r} not found in module {module_id}")
    value = re.search(rf"(?<![\w$.]){re.escape(export.group(1))}\s*=\s*{NUMBER}(?=\s*[,;}}])",
                      body)
    if not value:
        raise LookupError(f"the value of {export.group(1)!r} not found in module {module_id}")
    return float(value.group(1)), (f"`{imports[-1].group(0)}` → module {module_id} in "
                                   f"`{_rel(where, site)}`: `{value.group(0)}`")


def mlflow(site: Path) -> Refresh:
    """MLflow's UI polls: the runs table re-fetches on a timer while auto-refresh is on."""
    files = sorted((site / "mlflow/server/js/build/static/js").glob("*.js"),
                   key=lambda p: (not p.name.startswith("main."), p.name))
    if not files:
        return Refresh("MLflow's UI bundle not found", None)
    timer = re.compile(rf"window\.setTimeout\(\s*{ID}\s*,\s*({ID})\.({ID})\s*\)")
    default = re.compile(r"autoRefreshEnabled\s*:\s*(!0|!1|true|false)")
    interval: float | None = None
    parts = []
    try:
        for path in files:
            text = _read(path)
            at = text.find("isAutoRefreshing:!0")  # the runs table's polling fetch
            m = timer.search(text, at, at + 4000) if at >= 0 else None
            if m:
                interval, source = _constant(files, path, m.start(), m.group(1), m.group(2),
                                             site)
                parts.append(f"the runs table re-fetches every {interval / 1000:g} s: "
                             f"`{m.group(0)}` in `{_rel(path, site)}`, {source}")
                break
        for path in files:
            text = _read(path)
            for m in default.finditer(text):
                start = _module_start(text, m.start())
                if "selectedColumns" in text[start:m.start() + 2000]:
                    on = m.group(1) in ("!0", "true")
                    parts.append(f"auto-refresh {'on' if on else 'off'} by default: "
                                 f"`{m.group(0)}` in `{_rel(path, site)}` (the experiment "
                                 f"page's initial state)")
                    if not on:
                        interval = None
                    break
            else:
                continue
            break
    except LookupError as e:
        parts.append(f"could not follow the bundle ({e})")
    if interval is None and not parts:
        return Refresh("MLflow's polling timer not found in its UI bundle", None)
    return Refresh("polling: " + "; ".join(parts), interval)


def trackio(site: Path) -> Refresh:
    """Trackio's page polls every 1 s locally (2.5 s on a Hugging Face Space); its trainer
    writes to SQLite from a background thread every ``BATCH_SEND_INTERVAL``."""
    parts = []
    interval: float | None = None
    rx = re.compile(r"function \w+\(\)\{return \w+\(\)\?([\de.]+):([\de.]+)\}")
    for path in sorted((site / "trackio/frontend/dist/assets").glob("index-*.js")):
        m = rx.search(_read(path))
        if m:
            interval = float(m.group(2))
            parts.append(f"the page polls with `setInterval` every {interval / 1000:g} s "
                         f"locally ({float(m.group(1)) / 1000:g} s on a `.hf.space` host): "
                         f"`{m.group(0)}` in `{_rel(path, site)}`")
            break
    run_py = site / "trackio/run.py"
    if run_py.exists():
        m = re.search(r"^BATCH_SEND_INTERVAL\s*=\s*([\d.]+)", _read(run_py), re.MULTILINE)
        if m:
            parts.append(f"`trackio.log` queues, and a thread writes the queue to SQLite every "
                         f"{m.group(1)} s: `{m.group(0)}` in `trackio/run.py`")
    if not parts:
        return Refresh("Trackio's polling interval not found", None)
    return Refresh("polling: " + "; ".join(parts), interval)


def aim(site: Path) -> Refresh:
    """Aim's explorers poll only with 'live update' on, which is off by default; its UI ships
    in the ``aim_ui`` package and reads the index ``aim up`` keeps."""
    rx = re.compile(rf"liveUpdate:\{{delay:{NUMBER},enabled:(!0|!1|true|false)\}}")
    for path in sorted((site / "aim_ui/build/static/js").glob("main*.js")):
        m = rx.search(_read(path))
        if m:
            every = float(m.group(1))
            on = m.group(2) in ("!0", "true")
            return Refresh(f"polling, {'on' if on else 'opt-in'}: the explorers' 'live update' "
                           f"is {'on' if on else 'off'} by default and re-runs the search every "
                           f"{every / 1000:g} s when on: `{m.group(0)}` in `{_rel(path, site)}`",
                           every if on else None)
    return Refresh("Aim's live-update setting not found in its UI bundle", None)
