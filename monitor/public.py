"""A job's public state (docs/state.md, Job state): its fields, and the msgspec struct that
holds them in the stored order, made and written as JSON in one step each.

The worker writes every job a batch touches as JSON. Built as a dict of 29 keys and handed
to orjson, that was a sixth of its CPU at 100,000 jobs; a struct is made from its fields
without hashing a key, and msgspec writes it from names it encoded once. The JSON is the
same but for the spelling of a float's exponent (``1e16``, where orjson writes ``1e+16``):
the same number to every reader. :meth:`monitor.rules.JobState.public_struct` fills it.

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

# Not tracked by the garbage collector: one is made and dropped for every job a batch
# touches, and it is never part of a cycle.
PublicState: Final = msgspec.defstruct("PublicState", STORED_ORDER, gc=False,
                                       module=__name__)

to_json: Final = msgspec.json.Encoder().encode
to_dict: Final = msgspec.structs.asdict
