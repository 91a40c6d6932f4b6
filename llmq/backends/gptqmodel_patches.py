"""Version-gated fixes for GPTQModel 7.7 on CPU, applied only when llmq runs GPTQModel.

1. fp32 AWQ packing. GPTQModel loads a model in bfloat16 on CPU unless told otherwise
   (``gptqmodel/utils/model.py`` ``auto_dtype``), and AWQ's scale and clip searches in bf16 cost
   SmolLM2-135M dearly: ppl 43.51 (asym g64) against 26.73 when the same search runs in fp32
   (WikiText-2 test, seqlen 1024 x 16; the RTN floor is 30.30). llmq therefore quantizes in fp32,
   but the CPU packing class ``AwqTorchLinear`` lists only fp16/bf16 as supported dtypes and refuses
   fp32 inputs. Its packing math is dtype-agnostic (scales are stored as fp16 either way), so fp32
   is added to its list.
2. AWQ clip search speed. ``AWQProcessor._compute_best_clip`` forms a ``[co, tokens, groups,
   group_size]`` broadcast product per grid step. The same reduction as a batched matmul selects the
   same clip values (``tests/backends/test_gptqmodel_patches.py`` compares both on random data), 29.5x
   faster on a 1536x576 linear (7.63 s -> 0.26 s; ``python scripts/bench_awq_clip.py``, 2-core CPU).

3. Log location. GPTQModel writes a ``logs/`` folder into the current directory on every run;
   ``redirect_logs`` moves it under llmq's cache (``$LLMQ_CACHE/gptqmodel-logs``).

1 and 2 are skipped for other GPTQModel versions (their code may differ) and when
``LLMQ_NO_GPTQMODEL_PATCHES=1``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from llmq.backends.base import package_version

PATCHED_VERSIONS = ("7.7.",)
_applied = False
#: GPTQModel's own clip search, kept for comparison
original_compute_best_clip = None


def supported() -> bool:
    v = package_version("gptqmodel") or ""
    return v.startswith(PATCHED_VERSIONS) and os.environ.get("LLMQ_NO_GPTQMODEL_PATCHES", "0") != "1"


def fast_compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """``AWQProcessor._compute_best_clip`` with the per-group dot products as one ``bmm``.

    Same sampling of tokens, same grid, same quantizer, same first-minimum tie rule and NaN
    handling as GPTQModel 7.7; returns ``[co, n_group, 1]`` like the original."""
    import torch

    co, ci = w.shape
    gs = self.qcfg.group_size if self.qcfg.group_size > 0 else ci
    x = input_feat.reshape(-1, input_feat.shape[-1])
    step = max(1, x.shape[0] // n_sample_token)
    x = x[::step].to(w.device, w.dtype)                      # [T, ci]
    xg = x.reshape(x.shape[0], -1, gs).permute(1, 0, 2)       # [G, T, gs]
    wg = w.reshape(co, -1, gs)                                 # [co, G, gs]
    org_max = wg.abs().amax(dim=-1, keepdim=True)              # [co, G, 1]
    org_out = torch.bmm(xg, wg.permute(1, 2, 0))               # [G, T, co]
    errs, vals = [torch.full_like(org_max, float("inf"))], [org_max]
    clamped, quant = torch.empty_like(wg), torch.empty_like(wg)
    for i_s in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i_s / n_grid)
        torch.clamp(wg, -max_val, max_val, out=clamped)
        self._pseudo_quantize_tensor_into(clamped, quant, abs_max=max_val)
        cur = torch.bmm(xg, quant.permute(1, 2, 0))
        err = cur.sub_(org_out).pow_(2).mean(dim=1)            # [G, co]
        errs.append(err.t().unsqueeze(-1))
        vals.append(max_val)
    best = torch.stack(errs, 0).nan_to_num(nan=torch.inf).argmin(dim=0)
    return torch.gather(torch.stack(vals, 0), 0, best.unsqueeze(0)).squeeze(0)


def apply() -> bool:
    """Apply both patches once; returns whether they are active."""
    global _applied, original_compute_best_clip
    if _applied:
        return True
    if not supported():
        return False
    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    params = list(inspect.signature(AWQProcessor._compute_best_clip).parameters)
    if params[:3] != ["self", "w", "input_feat"] or not hasattr(AWQProcessor, "_pseudo_quantize_tensor_into"):
        return False
    original_compute_best_clip = AWQProcessor._compute_best_clip
    AWQProcessor._compute_best_clip = fast_compute_best_clip
    if torch.float32 not in AwqTorchLinear.SUPPORTS_DTYPES:
        AwqTorchLinear.SUPPORTS_DTYPES = [*AwqTorchLinear.SUPPORTS_DTYPES, torch.float32]
    _applied = True
    return True


def redirect_logs() -> None:
    """Keep GPTQModel's per-run logs out of the user's working directory."""
    from pathlib import Path

    try:
        from gptqmodel.looper import loop_processor
    except ImportError:  # pragma: no cover - other layouts
        return
    if isinstance(getattr(loop_processor, "_PROJECT_LOG_DIR", None), Path):
        from llmq.models import cache_dir

        loop_processor._PROJECT_LOG_DIR = cache_dir() / "gptqmodel-logs"


def interactive() -> bool:
    """Both output streams are terminals: GPTQModel's live progress bars redraw in place there; in
    a log file every redraw is a new line (thousands per run)."""
    import sys

    try:
        return sys.stderr.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def quiet_logs() -> bool:
    """Outside a terminal: GPTQModel's INFO lines and progress bars off (warnings and errors stay);
    llmq prints one line per layer instead (``layer_progress``). Call before importing gptqmodel:
    its import logs a banner at INFO through LogBar's shared logger, which is created here first
    so GPTQModel does not reset its level. Returns whether it silenced anything."""
    if interactive() or os.environ.get("LLMQ_GPTQMODEL_VERBOSE", "0") == "1":
        return False
    import logging

    try:
        from logbar import LogBar
    except ImportError:  # pragma: no cover - another GPTQModel logging stack
        return False
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # LogBar's own "headless" note and blank line
        LogBar.shared().setLevel(logging.WARNING)
    try:
        from gptqmodel.utils import logger as gm_logger
    except ImportError:  # pragma: no cover
        return True
    if hasattr(gm_logger, "_suppress_live_renderables"):  # its progress bars become no-ops
        gm_logger._suppress_live_renderables = lambda: True
    return True


def layer_progress(model: Any, label: str, clock: Any = None) -> list:
    """Print ``llmq: <label>: layer i/N`` to stderr the first time each decoder layer runs (GPTQ and
    AWQ process the layers in order, so this is one line per layer), from the second layer on with
    the time per layer so far and the time left at that rate: a 7B model takes minutes per layer on
    a CPU, and only the first layers say how long the whole job will take. Returns the hook handles
    (``.remove()`` them after quantizing; empty: no layer list found)."""
    import sys
    import time

    import torch

    clock = clock or time.monotonic
    cfg = getattr(model, "config", None)
    n = getattr(getattr(cfg, "text_config", cfg), "num_hidden_layers", None)
    layers = None
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and n and len(mod) == n:
            layers = mod
            break
    if layers is None:
        return []
    seen: set[int] = set()
    started: list[float] = []

    def hook(i: int):
        def pre(module, args):  # noqa: ARG001
            if i in seen:
                return
            seen.add(i)
            now = clock()
            started.append(now)
            line = f"llmq: {label}: layer {i + 1}/{n}"
            done = len(started) - 1
            if done:
                from llmq.cost import human_time

                per = (now - started[0]) / done
                line += f" ({human_time(per)} per layer; about {human_time(per * (n - done))} to go)"
            print(line, file=sys.stderr, flush=True)
        return pre

    return [layer.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
