"""``llmq.json``: the record every llmq output carries (scheme, config, sizes, versions, the
evaluation and verification results). One name for the file and one reader, used by every layer
that writes, loads, evaluates or publishes an output."""

from __future__ import annotations

import json
import os
from pathlib import Path

META_FILE = "llmq.json"


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``llmq.json`` of the output folder ``path``, or None when it has none."""
    f = Path(path) / META_FILE
    if not f.is_file():
        return None
    with open(f) as fh:
        return json.load(fh)
