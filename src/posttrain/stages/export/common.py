"""What the export commands share: the probe chat and the export section."""

from __future__ import annotations

from posttrain.config import ExportParams, Params

# What the reloaded export is checked on: a short chat the card's example also uses.
PROBE = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]


def export_params(params: Params) -> ExportParams:
    if params.export is None:
        raise ValueError("export is null in these params: export is off")
    return params.export
