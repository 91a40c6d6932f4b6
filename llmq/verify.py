"""Every saved output is checked against its original before it is reported: KL divergence of the
next-token distributions and top-1 agreement on a few hundred tokens of fixed, offline text, with
both models on the output's runtime. ``QuantizedModel.save`` runs it on the folder it just wrote and
refuses (``VerificationError``) an output whose mean KL exceeds its scheme's bound
(``Backend.verify_bound``, set from ``scripts/bench_verify.py``): a model that loads, runs and has
finite weights can still compute garbage (Gemma's uninitialized ``embed_scale`` gave the
vocabulary size as perplexity), and nothing else in a run would notice.

Only one model is in memory at a time (besides the caller's): the original runs first, its
distributions are cached (``llmq.eval.kld.ReferenceCache``, exact), then the output runs.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

from llmq.errors import LlmqError

#: the text: Python's bundled language reference (offline, in every Python), ``WINDOWS`` windows of
#: ``SEQLEN`` tokens from evenly spaced places of it
TEXT = "builtin"
WINDOWS = 2
SEQLEN = 64


class VerificationError(LlmqError):
    """An output computes something far from its original; kept aside at ``path``, never published."""

    def __init__(self, message: str, result: dict, path: Path | None = None, meta: dict | None = None):
        super().__init__(message)
        self.result, self.path, self.meta = result, path, meta


def windows(tokenizer: Any, n_windows: int = WINDOWS, seqlen: int = SEQLEN) -> tuple[list[list[int]], str]:
    """``(token id windows, description)``: ``n_windows`` windows of ``seqlen`` tokens (the
    tokenizer's BOS included where it adds one) from evenly spaced places of the builtin text."""
    from llmq.calibration import load_texts

    texts, desc = load_texts(TEXT)
    joined = "\n\n".join(texts)
    step = len(joined) // n_windows
    out = []
    for i in range(n_windows):
        ids = tokenizer(joined[i * step:i * step + 16 * seqlen])["input_ids"][:seqlen]
        if len(ids) < seqlen:  # pragma: no cover - 16 characters per token never happens on this text
            raise LlmqError(f"The verification text gave {len(ids)} tokens for a window of {seqlen}.")
        out.append(list(ids))
    return out, f"{desc}, {n_windows} windows x {seqlen} tokens"


def _logits(model: Any, ids: list[int], vocab: int | None) -> Any:
    import torch

    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0].float()
    return logits[:, :vocab] if vocab else logits


def verify(original: Any, quantized: str | os.PathLike, *, scheme: str | None = None, bound: float | None = None,
           device: str = "cpu", n_windows: int = WINDOWS, seqlen: int = SEQLEN, tokenizer: Any = None,
           trust_remote_code: bool = False) -> dict[str, Any]:
    """Compare the output folder ``quantized`` with ``original`` (a model folder, a Hub id or a
    ``.gguf`` source as ``llmq run`` takes, or a loaded ``(model, tokenizer)`` pair) on the output's
    runtime: both run the same windows of fixed text and the mean KL(original || output) per token
    and the top-1 agreement are returned with ``passed = kld <= bound``. ``bound``: default the
    scheme's (``scheme``, default the one ``llmq.json`` names; ``Backend.verify_bound``). The plugin
    that loads ``quantized`` also says how the original runs (``Backend.verify_reference``: e.g. a
    .gguf output is compared with the original converted to an f32 GGUF, both on llama.cpp).

    Returns ``{"passed", "kld", "kld_p99", "top1", "tokens", "bound", "scheme", "text", "runtime",
    "reference_runtime", "wall_s"}``; non-finite logits count as failed (``kld`` is then inf)."""
    import math

    from llmq.eval.kld import ReferenceCache
    from llmq.schemes import get_scheme, plugin_of_folder

    t0 = time.perf_counter()
    quantized = Path(quantized).expanduser()
    if scheme is None:
        from llmq.meta import META_FILE, read_meta

        scheme = read_meta(quantized).get("scheme") if (quantized / META_FILE).is_file() else None
    plugin = plugin_of_folder(quantized)
    if bound is None:
        if scheme is None:
            raise LlmqError(f"verify: {quantized} has no llmq.json naming its scheme; pass scheme= or bound=.")
        sch = get_scheme(scheme)
        bound = sch.backend_cls().verify_bound(sch)
    ref_model, tok, ref_runtime, cleanup = _reference(original, plugin, device, tokenizer, trust_remote_code)
    wins, text = windows(tok, n_windows, seqlen)
    try:
        vocab = None
        cache = None
        for i, ids in enumerate(wins):
            lg = _logits(ref_model, ids, None)
            if cache is None:  # a config's padding rows beyond the tokenizer are never produced: left out
                vocab = min(lg.shape[-1], len(tok)) if len(tok) else lg.shape[-1]
            lg = lg[:, :vocab]
            if cache is None:
                cache = ReferenceCache(len(wins) * seqlen, vocab, mode="exact")
            cache.add(i, lg)
        del ref_model, lg
        gc.collect()
        if cleanup:
            cleanup()
        model, _ = _load_output(plugin, quantized, device, trust_remote_code)
        runtime = getattr(model, "llmq_runtime", plugin.runtime)
        finite = True
        for i, ids in enumerate(wins):
            lg = _logits(model, ids, vocab)
            if lg.shape[-1] < vocab:  # a runtime that drops the config's padding rows: compare the real vocabulary
                raise LlmqError(f"verify: the output has {lg.shape[-1]} logits per token, the original {vocab}.")
            finite = finite and bool(lg.isfinite().all())
            cache.compare(i, lg)
        del model
        gc.collect()
        res = cache.result(text)
    finally:
        if cache is not None:
            cache.close()
    kld = res.mean if finite and math.isfinite(res.mean) else math.inf
    return {"passed": bool(kld <= bound), "kld": kld, "kld_p99": res.p99, "top1": res.same_top,
            "tokens": res.tokens, "bound": float(bound), "scheme": scheme, "text": text, "runtime": runtime,
            "reference_runtime": ref_runtime, "wall_s": round(time.perf_counter() - t0, 2)}


def _reference(original: Any, plugin: Any, device: str, tokenizer: Any, trust_remote_code: bool
               ) -> tuple[Any, Any, str, Any]:
    """``(model, tokenizer, runtime, cleanup or None)`` of the original on ``plugin``'s runtime."""
    if isinstance(original, (tuple, list)) and len(original) == 2:
        return original[0], tokenizer or original[1], getattr(original[0], "llmq_runtime", "transformers"), None
    from llmq.models import resolve_model

    if str(original).endswith(".gguf") and getattr(plugin, "runtime", None) == "llama.cpp" and \
            hasattr(plugin, "verify_gguf_reference"):  # a .gguf source of a .gguf output: both on llama.cpp
        model, tok = plugin.verify_gguf_reference(Path(original).expanduser(), trust_remote_code=trust_remote_code)
        return model, tokenizer or tok, model.llmq_runtime, None
    src = Path(original) if isinstance(original, Path) and original.is_dir() else \
        resolve_model(str(original), trust_remote_code=trust_remote_code).local_dir()
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    model, runtime, cleanup = plugin.verify_reference(Path(src), device, trust_remote_code=trust_remote_code)
    return model, tokenizer, runtime, cleanup


def _load_output(plugin: Any, path: Path, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """The output as ``llmq.load`` gives it (the plugin that owns it loads it); ``llmq.core`` sits beside this module."""
    import warnings

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    import inspect

    if kwargs and "trust_remote_code" not in inspect.signature(plugin.load).parameters:
        kwargs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plugin.load(path, device=device, **kwargs)


def summary(result: dict) -> str:
    """One line naming the measure and the verdict, for the CLI, the error and the card."""
    if result.get("skipped"):
        return f"verification skipped ({result.get('reason') or 'not asked for'})"
    kld = result["kld"]
    shown = "inf (non-finite logits)" if kld == float("inf") else f"{kld:.3g}"
    scheme = f"{result['scheme']} " if result.get("scheme") else ""
    rel = "within" if result["passed"] else "exceeds"
    return (f"verification {'passed' if result['passed'] else 'failed'}: mean KL divergence {shown} nats/token "
            f"from the original {rel} the {scheme}bound {result['bound']:g}; top-1 agreement "
            f"{100 * result['top1']:.1f}% over {result['tokens']} tokens ({result['text']}; output on "
            f"{result['runtime']}, original on {result['reference_runtime']})")
