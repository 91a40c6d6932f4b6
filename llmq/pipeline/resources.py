"""Said before the first weight loads: what quantizing will cost on this machine (peak RAM, wall
time: ``llmq.cost``'s measured model of each scheme), and a one-line refusal naming what would fit
when it cannot, instead of being killed for memory half way. After saving, the sample generation is
skipped when the output would not fit in RAM to load."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from llmq.errors import LlmqError

#: projected to take longer than this: say so, and how to stop
LONG_S = 3600.0


class NotEnoughMemory(LlmqError):
    """The job's projected peak RAM exceeds what this machine has available."""


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def projection(source: Any, scheme: Any, config: Any, backend_cls: Any) -> tuple[Any, Any, Any]:
    """``(profile, cost features, llmq.cost.Projection | None)`` of quantizing ``source`` with ``scheme``."""
    from llmq.advisor.params import profile
    from llmq.cost import project

    prof = profile(str(source.path) if source.path is not None else source.name, revision=source.revision,
                   trust_remote_code=source.trust_remote_code)
    feats = backend_cls.cost_features(prof, scheme, config)
    return prof, feats, project(backend_cls.cost_key(scheme, config), feats)


def export_gib(prof: Any, scheme: Any, config: Any, backend_cls: Any) -> float | None:
    """RAM that writing the asked-for export format holds at once (None: the plugin's own format)."""
    from llmq.backends.compressed import FORMAT, export_peak_bytes
    from llmq.backends.exports import export_format
    from llmq.sizing import BYTES

    if export_format(config) != FORMAT or FORMAT not in backend_cls.exports:
        return None
    quantized = backend_cls.estimate(prof, scheme, config, "cpu").bytes
    return export_peak_bytes(prof, quantized, BYTES.get(getattr(config, "dtype", "bfloat16"), 2)) / 2**30


def whole_model_gib(prof: Any, feats: Any, scheme: Any, config: Any, backend_cls: Any) -> float | None:
    """The formula :func:`check_resources` refuses a whole-model job by (GiB): an unstreamed plugin's
    own peak, or the export's, whichever is larger; None for a streamed job in its own format."""
    found = [x for x in (None if feats.streams else feats.ram_bytes / 2**30,
                         export_gib(prof, scheme, config, backend_cls)) if x is not None]
    return max(found) if found else None


def alternatives(prof: Any, exclude: str, available_gib: float) -> list[tuple[str, Any]]:
    """Other schemes (default settings, calibrated ones on 16 x 512 tokens) projected to fit."""
    from llmq.cost import load_coefficients, project
    from llmq.schemes import get_scheme

    out = []
    for name in (load_coefficients().get("schemes") or {}):
        if name == exclude or "+" in name:
            continue
        try:
            sch = get_scheme(name)
            cls = sch.backend_cls()
            over = {"calibration": "wikitext2", "n_samples": 16, "seqlen": 512} if cls.needs_calibration else {}
            p = project(name, cls.cost_features(prof, sch, sch.config(**over)))
        except LlmqError:
            continue
        if p is not None and p.ram_gib <= available_gib:
            out.append((name, p))
    return sorted(out, key=lambda x: x[1].ram_gib)


def _hints(prof: Any, scheme: Any, config: Any, backend_cls: Any, avail: float) -> str:
    """What would fit instead: other measured schemes, fewer calibration samples, a GPU, the override."""
    fits = alternatives(prof, scheme.name, avail)
    hints = []
    if fits:
        hints.append("schemes that fit: " + ", ".join(f"{n} (~{q.ram_gib:.1f} GiB)" for n, q in fits[:4]))
    if getattr(config, "n_samples", None) and backend_cls.needs_calibration:
        hints.append("fewer calibration samples (--n-samples)")
    hints.append("--device cuda on a machine with a GPU, or --no-memory-check to try anyway")
    return "; ".join(hints) + "."


def check_resources(source: Any, scheme: Any, config: Any, backend_cls: Any, device: str, *,
                    note: Callable[[str], None] = _note, available_gib: float | None = None) -> Any:
    """State the projection; raise :class:`NotEnoughMemory` (one line, naming what would fit) when
    the projected peak exceeds the available RAM. CPU only: GPU memory is the advisor's concern."""
    from llmq import hardware
    from llmq.cost import load_coefficients

    if not device.startswith("cpu"):
        return None
    prof, feats, p = projection(source, scheme, config, backend_cls)
    avail = available_gib if available_gib is not None else hardware.usable_ram_gb()
    if p is not None:
        note(f"llmq: projected on this machine: {p.describe()} for {prof.parameters / 1e9:.2f}B parameters "
             f"({avail:.1f} GiB RAM available; {p.basis}).")
        if feats.half_matmuls and hardware.native_bf16() is False and "bf16" in load_coefficients().get("cpu", ""):
            note(f"llmq: this CPU has no native bf16 (AVX512-BF16 or AMX) and the CPU these times were measured on "
                 f"had: {scheme.name}'s calibration runs bf16 matmuls, 3-5x slower here "
                 "(scripts/bench_cpu_dtypes.py), so expect several times the projected time.")
        if p.ram_gib > avail:
            raise NotEnoughMemory(f"{scheme.name} on this model needs about {p.ram_gib:.1f} GiB RAM at peak but "
                                  f"{avail:.1f} GiB is available; " + _hints(prof, scheme, config, backend_cls, avail))
    elif not feats.streams and feats.ram_bytes / 2**30 > avail:
        # no measurement, but a plugin that holds the whole model says by its own formula it cannot fit
        raise NotEnoughMemory(f"{scheme.name} holds the whole model in memory: about {feats.ram_bytes / 2**30:.1f} "
                              f"GiB RAM for this model by its formula, but {avail:.1f} GiB is available; "
                              + _hints(prof, scheme, config, backend_cls, avail))
    elif 2 * prof.parameters / 2**30 > avail / 4:  # only where memory could matter: a bf16 copy > 1/4 of RAM
        note(f"llmq: no measured cost model for {scheme.name} (scripts/bench_scale.py); no RAM/time projection.")
    ex = export_gib(prof, scheme, config, backend_cls)
    if ex is not None and ex > avail:
        raise NotEnoughMemory(f"writing {scheme.name} as compressed-tensors holds every quantized weight in float32 "
                              f"at once: about {ex:.1f} GiB RAM for this model, but {avail:.1f} GiB is available; "
                              "save llmq's own format (no --format) here, export on a machine with more RAM, or "
                              "--no-memory-check to try anyway.")
    if p is None:
        return None
    if p.wall_s > LONG_S:
        note(f"llmq: this is projected to take about {p.wall_s / 3600:.1f} h. Ctrl-C stops it at any point without "
             "leaving a partial output (it is written to a temporary folder); a rerun starts over, so fewer "
             "calibration samples (--n-samples) are the way to shorten it.")
    return p


def fits_to_load(path: Path, backend: Any, note: Callable[[str], None] = _note) -> bool:
    """Whether a saved transformers output fits in the available RAM to load for the sample (its
    weights plus 10%); a runtime that maps the file (llama.cpp) always does."""
    from llmq import hardware
    from llmq.models import folder_size

    if backend.runtime != "transformers":
        return True
    need = folder_size(path, backend.weight_patterns) * 1.1 / hardware.GB
    avail = hardware.usable_ram_gb()
    if need > avail:
        note(f"llmq: sample skipped: loading the output needs about {need:.1f} GiB RAM, {avail:.1f} GiB is available.")
        return False
    return True
