"""What the worker writes as JSON for every job a batch touches: its public state (docs/
state.md, Job state), its fold state and its view's extras, each a msgspec struct with its
fields in the written order, made and written in one step each.

Built as dicts (29 keys for the public state) and handed to orjson, these were a sixth of
the worker's CPU at 100,000 jobs; a struct is made from its fields without hashing a key.
The JSON is the same but for the spelling of a float's exponent (``1e16``, where orjson
writes ``1e+16``): the same number to every reader. :class:`monitor.rules.JobState` fills
them.

(Not in :mod:`monitor.rules`: mypyc compiles that module, and a struct is msgspec's own
type.)
"""

from __future__ import annotations

from typing import Final

import msgspec

PUBLIC_FIELDS: Final = (
    "id", "model_name", "model_display", "name", "status", "archived", "epoch", "step", "loss",
    "eval_loss", "best_eval_loss", "best_epoch", "best_step", "best_checkpoint_path", "final_loss",
    "final_eval_loss", "total_epochs", "total_steps", "created_at", "updated_at", "finished_at",
    "gpu_count", "error", "eval_count", "forecast", "autostop", "stop_requested", "stale",
    "last_seen",
)
"""The fields of a job state (the view adds its own)."""

STORED_ORDER: Final = (*(f for f in PUBLIC_FIELDS if f != "model_display"), "model_display")
"""The order of the stored JSON: ``model_display`` last."""

# Not tracked by the garbage collector: one of each is made and dropped for every job a
# batch touches, and none is ever part of a cycle.
PublicState: Final = msgspec.defstruct("PublicState", STORED_ORDER, gc=False,
                                       module=__name__)
FoldState: Final = msgspec.defstruct(  # what the fold needs beyond the public state
    "FoldState", ("latest_key", "loss_key", "eval_key", "best_key", "given_final_loss",
                  "given_final_eval_loss", "ckpts", "seen", "points", "alive_at"),
    gc=False, module=__name__)
ViewExtras: Final = msgspec.defstruct(  # what a view adds to the public state, in order
    "ViewExtras", ("is_best", "delta_pct", "tier", "gpu_hours"), gc=False, module=__name__)

to_json: Final = msgspec.json.Encoder().encode
to_dict: Final = msgspec.structs.asdict
