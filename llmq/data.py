"""Where named datasets live: the Hugging Face Hub, or a local mirror when ``LLMQ_DATA_DIR`` is set.

``LLMQ_DATA_DIR`` points at a folder laid out like this repository's ``../shared/data``
(``wikitext2/wiki.test.raw``, ``wikitext2/wiki.valid.tokens``, ``tasks/*.jsonl``), so tests,
benchmarks and offline machines use the same code path as users online.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmq.errors import LlmqError


def data_dir(required: bool = False) -> Path | None:
    env = os.environ.get("LLMQ_DATA_DIR")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise LlmqError(f"LLMQ_DATA_DIR={env} is not a folder.")
        return p
    if required:
        raise LlmqError("This needs local data: set LLMQ_DATA_DIR to a folder like ../shared/data.")
    return None


def local_file(*parts: str) -> Path | None:
    d = data_dir()
    if d is None:
        return None
    p = d.joinpath(*parts)
    return p if p.is_file() else None


def check_hub(what: str) -> None:
    from llmq.models import check_hub_reachable

    check_hub_reachable(what)
