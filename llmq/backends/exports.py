"""Checkpoint formats a plugin writes besides its own (``Backend.exports``, picked by the config's
``format``): the package each one needs, checked when the plugin is made (before any weight loads)
and recorded in llmq.json's versions. Apart from ``llmq.backends.base`` so the interface stays short."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

from llmq.errors import MissingDependencyError

#: export format -> (import name, pip distribution, llmq extra) it needs
EXPORT_REQUIRES = {"compressed-tensors": ("compressed_tensors", "compressed-tensors", "compressed-tensors")}


def export_format(config: Any) -> str | None:
    """The export format ``config`` asks for (None: the plugin's own)."""
    return getattr(config, "format", None)


def check_export_installed(config: Any) -> None:
    """One line naming the package and extra when the asked-for format's writer is not installed."""
    fmt = export_format(config)
    if fmt in EXPORT_REQUIRES and importlib.util.find_spec(EXPORT_REQUIRES[fmt][0]) is None:
        raise MissingDependencyError(f"format={fmt!r}", [EXPORT_REQUIRES[fmt][1]], EXPORT_REQUIRES[fmt][2])


def export_versions(config: Any) -> dict[str, str | None]:
    """``{distribution: version}`` of the package that writes the asked-for format (llmq.json)."""
    fmt = export_format(config)
    if fmt not in EXPORT_REQUIRES:
        return {}
    dist = EXPORT_REQUIRES[fmt][1]
    try:
        return {dist: importlib.metadata.version(dist)}
    except importlib.metadata.PackageNotFoundError:
        return {dist: None}
