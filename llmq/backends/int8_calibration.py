"""Calibration for ``int8-static`` (``llmq.backends.int8_static``): activation statistics through
torchao's ``HistogramObserver`` (one per Linear input), the three ways to read a clipping range off
it (``minmax``, ``percentile``, ``entropy``: TensorRT's KL-divergence threshold), SmoothQuant's
per-channel scales, and each Linear's measured output error under static and per-token dynamic
activations (which layers fall back to dynamic). torch/torchao ship no percentile or KL reader and
onnxruntime (which has one) is not a dependency, so those two short readers are written here; the
observer, the qparam formula and the kernels are torchao's."""

from __future__ import annotations

from typing import Any, Sequence

from llmq.errors import ConfigError

METHODS = ("minmax", "percentile", "entropy")


HIST_BINS = 2048


KL_TARGET_BINS = 128


# -- reading a clipping range off a histogram ---------------------------------------------------
def _hist(obs: Any):
    import numpy as np

    h = obs.histogram.detach().double().cpu().numpy()
    lo, hi = float(obs.min_val), float(obs.max_val)
    edges = np.linspace(lo, hi, len(h) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(h)])
    return h, edges, cdf


def _abs_hist(obs: Any, bins: int = HIST_BINS):
    """The |x| histogram on [0, max|x|], folded from the signed one by interpolating its CDF."""
    import numpy as np

    _, edges, cdf = _hist(obs)
    amax = max(abs(edges[0]), abs(edges[-1]))
    a = np.linspace(0.0, amax, bins + 1)
    inside = np.interp(a, edges, cdf) - np.interp(-a, edges, cdf)
    return np.diff(inside).clip(min=0), amax


def percentile_range(obs: Any, percentile: float, sym: bool) -> tuple[float, float]:
    """Symmetric: the smallest t with ``percentile`` % of |x| inside [-t, t]. Asymmetric: the
    ``100-p`` and ``p`` percentiles of x (each tail loses ``100-p`` %)."""
    import numpy as np

    if sym:
        h, amax = _abs_hist(obs)
        c = np.concatenate([[0.0], np.cumsum(h)])
        edges = np.linspace(0.0, amax, len(h) + 1)
        t = float(np.interp(percentile / 100 * c[-1], c, edges))
        return -t, t
    _, edges, cdf = _hist(obs)
    n = cdf[-1]
    lo = float(np.interp((100 - percentile) / 100 * n, cdf, edges))
    hi = float(np.interp(percentile / 100 * n, cdf, edges))
    return lo, hi


def entropy_threshold(hist: Any, amax: float, target_bins: int = KL_TARGET_BINS) -> float:
    """TensorRT's calibration: the threshold on a |x| histogram whose clipped-and-requantized
    distribution Q is closest (KL(P||Q)) to the clipped reference P (outliers folded into the
    last bin). Same recipe as ONNX Runtime's ``get_entropy_threshold`` and MXNet's."""
    import numpy as np

    hist = np.asarray(hist, dtype=np.float64)
    nbins = len(hist)
    width = amax / nbins
    if hist.sum() == 0 or amax == 0:
        return amax
    best_i, best_kl = nbins, np.inf
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = hist[i:].sum()
    for i in range(target_bins, nbins + 1):
        ref = hist[:i].copy()
        ref[-1] += tail[i]
        nonzero = hist[:i] != 0
        per = i // target_bins
        head = hist[: per * target_bins].reshape(target_bins, per)
        merged = head.sum(1)
        merged[-1] += hist[per * target_bins:i].sum()
        counts = nonzero[: per * target_bins].reshape(target_bins, per).sum(1)
        counts[-1] += nonzero[per * target_bins:i].sum()
        avg = np.divide(merged, counts, out=np.zeros_like(merged), where=counts > 0)
        q = np.repeat(avg, per)
        if len(q) < i:
            q = np.concatenate([q, np.full(i - len(q), avg[-1])])
        q = np.where(nonzero, q, 0.0)
        p_sum, q_sum = ref.sum(), q.sum()
        if q_sum == 0:
            continue
        p, qn = ref / p_sum, q / q_sum
        mask = p > 0
        qm = np.where(qn[mask] > 0, qn[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width if best_i < nbins else amax


def activation_range(obs: Any, method: str, *, percentile: float = 99.99, sym: bool = True) -> tuple[float, float]:
    """The (min, max) clipping range ``method`` reads from a ``HistogramObserver``."""
    lo, hi = float(obs.min_val), float(obs.max_val)
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        return percentile_range(obs, percentile, sym)
    if method == "entropy":
        h, amax = _abs_hist(obs)
        t = entropy_threshold(h, amax)
        return max(lo, -t), min(hi, t)
    raise ConfigError(f"calibration_method={method!r} is invalid; choose one of {', '.join(map(repr, METHODS))}.")


def activation_qparams(obs: Any, method: str, *, percentile: float = 99.99, sym: bool = True):
    """``(scale, zero_point)`` for one activation, with torchao's own qparam formula: float32 and
    int8 tensors of one element with as many dimensions as the Linear's inputs (``calibrate``
    records them; torchao's static kernel asserts they match: OPT feeds its MLP 2-D inputs)."""
    import torch

    lo, hi = activation_range(obs, method, percentile=percentile, sym=sym)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if sym:
        t = max(-lo, hi)
        lo, hi = -t, t
    q = _observer(sym)
    scale, zp = q._calculate_qparams(torch.tensor([lo]), torch.tensor([hi]))
    if sym:
        zp = torch.zeros_like(zp)
    shape = (1,) * getattr(obs, "input_ndim", 3)
    return scale.float().reshape(shape), zp.to(torch.int8).reshape(shape)


def _observer(sym: bool, bins: int = HIST_BINS):
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    return HistogramObserver(bins=bins, dtype=torch.qint8,
                             qscheme=torch.per_tensor_symmetric if sym else torch.per_tensor_affine)


# -- calibration --------------------------------------------------------------------------------
def target_linears(model: Any, skip: Sequence[str] = ()) -> list[str]:
    """The decoder Linears int8-static converts: every ``nn.Linear`` but the output head and the
    ``skip`` names/patterns (the head is handled by the embedding option)."""
    import torch

    from llmq.models import excluded_modules

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out_emb]
    keep = set(excluded_modules(None, names, tuple(skip))) if skip else set()
    return [n for n in names if n not in keep]


#: ``source(names, see, limit=None)``: calls ``see(name, input, output)`` for each Linear in ``names``
#: on each calibration sample (the first ``limit``): a whole model run with hooks
#: (:func:`model_source`) or one decoder layer's recorded run (``llmq.streaming.LayerRunner.record``)
Source = Any


def model_source(model: Any, samples: Sequence[Sequence[int]]) -> Source:
    """The calibration source of a model in memory: ``samples`` run through it with hooks."""
    def run(names: Sequence[str], see: Any, limit: int | None = None) -> None:
        _run(model, samples if limit is None else samples[:limit], names, see)
    return run


def calibrate(source: Source, names: Sequence[str], *, sym: bool = True,
              pre_scales: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``HistogramObserver`` per Linear in ``names`` that has seen its inputs from ``source``
    (divided by ``pre_scales`` when smoothing)."""
    obs = {n: _observer(sym) for n in names}

    def see(n: str, x: Any, out: Any) -> None:
        obs[n].input_ndim = x.dim()
        x = x.detach().float()
        if pre_scales is not None and n in pre_scales:
            x = x / pre_scales[n]
        obs[n](x.reshape(-1, x.shape[-1]))

    source(names, see)
    return obs


def channel_absmax(source: Source, names: Sequence[str]) -> dict[str, Any]:
    """Per input channel max|x| of each Linear in ``names`` (SmoothQuant's statistic)."""
    import torch

    amax: dict[str, Any] = {}

    def see(n: str, x: Any, out: Any) -> None:
        a = x.detach().float().abs().reshape(-1, x.shape[-1]).amax(0)
        amax[n] = a if n not in amax else torch.maximum(amax[n], a)

    source(names, see)
    return amax


def _run(model: Any, samples: Sequence[Sequence[int]], names: Sequence[str], see: Any) -> None:
    """Run ``samples`` through ``model`` with ``see(name, input, output)`` called after each Linear
    in ``names`` (the one hook loop calibration, smoothing and the fallback's error measure share)."""
    import torch

    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda mod, args, out, _n=n: see(_n, args[0], out)) for n in names]
    dev = next(model.parameters()).device
    try:
        with torch.no_grad():
            for s in samples:
                model(torch.tensor([list(s)], device=dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()


def smooth_scales(model: Any, amax: dict[str, Any], alpha: float | dict[str, float]) -> dict[str, Any]:
    """SmoothQuant: s_j = max|X_j|^a / max|W_j|^(1-a), per input channel (clamped to >= 1e-5);
    ``alpha`` one number or one per Linear name (those without one are not smoothed)."""
    mods = dict(model.named_modules())
    out = {}
    for n, a in amax.items():
        al = alpha.get(n) if isinstance(alpha, dict) else alpha
        if al is None:
            continue
        w = mods[n].weight.detach().float().abs().amax(0)
        s = (a.clamp(min=1e-5) ** al) / (w.clamp(min=1e-5) ** (1 - al))
        out[n] = s.clamp(min=1e-5)
    return out


def layer_errors(model: Any, source: Source, configs: dict[str, Sequence[Any]],
                 pre_scales: dict[str, Any] | None = None, limit: int | None = None) -> dict[str, list[tuple[float, float]]]:
    """Each Linear of ``model`` (names as in ``configs``) and its output error when quantized with
    each of its torchao configs (weight smoothed by ``pre_scales`` when given), as two relative
    errors over the first ``limit`` samples of ``source``: per token (the mean over the tokens of ||y_q - y||^2 / ||y||^2, where every token counts) and in
    total (sum ||y_q - y||^2 / sum ||y||^2, which the rare massive-activation tokens dominate:
    clipping them breaks the attention sinks although few tokens suffer). Measured layer by layer
    on the float model's own inputs with torchao's kernels: the cost of one layer's quantization,
    free of the others'."""
    import copy

    import torch
    from torchao.quantization import quantize_

    mods = dict(model.named_modules())
    qlin, num, den = {}, {}, {}
    for n, cs in configs.items():
        qlin[n] = []
        for c in cs:
            lin = copy.deepcopy(mods[n])
            if pre_scales is not None and n in pre_scales:
                with torch.no_grad():
                    lin.weight.mul_(pre_scales[n].to(lin.weight.dtype))
            quantize_(lin, c, filter_fn=None)
            if pre_scales is not None and n in pre_scales:
                lin.weight.act_pre_scale = (1.0 / pre_scales[n]).to(lin.weight.dtype)
            qlin[n].append(lin)
        num[n], den[n] = [[0.0, 0.0] for _ in cs], [0, 0.0]

    def see(n: str, x: Any, out: Any) -> None:
        y = out.detach().float().reshape(-1, out.shape[-1])
        norm = (y ** 2).sum(-1)
        den[n][0] += y.shape[0]
        den[n][1] += float(norm.sum())
        for i, lin in enumerate(qlin[n]):
            err = ((lin(x.detach()).float().reshape(y.shape) - y) ** 2).sum(-1)
            num[n][i][0] += float((err / norm.clamp(min=1e-12)).sum())
            num[n][i][1] += float(err.sum())

    source(list(configs), see, limit)
    return {n: [(t / max(den[n][0], 1), e / max(den[n][1], 1e-30)) for t, e in num[n]] for n in configs}


# -- SmoothQuant folded into the norms (int8-static's ``smooth_fold``) ------------------------------
def input_groups(model: Any, sample: Sequence[int], names: Sequence[str]) -> list[tuple[str | None, list[str]]]:
    """The Linears of ``names`` grouped by the tensor they read, from one forward of ``sample``:
    ``(producer, linears)`` where ``producer`` is the module that returned that tensor (the norm
    before q/k/v or gate/up) or None (a tensor built in a forward, e.g. o_proj's and down_proj's
    inputs). These are the groups vLLM fuses (qkv_proj, gate_up_proj)."""
    import torch

    produced: dict[int, str] = {}
    keep: list[Any] = []  # hold every output for the pass, so no id is reused
    read: dict[str, int] = {}

    def out_hook(name: str):
        def h(mod: Any, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                keep.append(out)
                produced.setdefault(id(out), name)  # the first producer (a no-op Dropout returns its input)
        return h

    mods = dict(model.named_modules())
    want = set(names)
    hooks = [m.register_forward_hook(out_hook(n)) for n, m in mods.items() if n and n not in want]
    def in_hook(name: str):
        def h(mod: Any, args: Any) -> None:
            keep.append(args[0])
            read[name] = id(args[0])
        return h

    hooks += [mods[n].register_forward_pre_hook(in_hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(torch.tensor([list(sample)[:16]], device=next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    by_tensor: dict[int, list[str]] = {}
    for n in names:
        by_tensor.setdefault(read[n], []).append(n)
    return [(produced.get(t), group) for t, group in by_tensor.items()]


def fold_smoothing(model: Any, samples: Sequence[Sequence[int]], groups: list[tuple[str | None, list[str]]],
                   alphas: dict[str, float]) -> dict[str, Any]:
    """SmoothQuant with the smoothing folded into the norm before each group: one
    s_j = max|X_j|^a / max_over_group(max|W_j|)^(1-a) per group (its Linears read one input), the
    norm's weight (and bias) divided by s, every Linear's weight columns multiplied by it, so no
    run-time scale remains. Groups not read from a norm, or whose Linears have no alpha, are left
    alone; Linears of one group must share one alpha. Checked on a sample: the float model's
    logits must not change (a norm computing ``x * (1 + w)``, as Gemma's, would). Returns
    ``{linear: s}`` for the smoothed Linears."""
    import torch

    mods = dict(model.named_modules())
    plan = []
    for producer, group in groups:
        al = {alphas.get(n) for n in group}
        if al == {None}:
            continue
        if len(al) > 1:
            raise ConfigError(f"smooth_fold: {', '.join(group)} read one input and share one smoothing, but their "
                              f"smooth_alpha differ ({sorted(map(str, al))}); give them one alpha.")
        norm = mods.get(producer) if producer else None
        w = getattr(norm, "weight", None)
        if norm is None or isinstance(norm, (torch.nn.Linear, torch.nn.Embedding)) or w is None or w.ndim != 1:
            continue  # nothing to fold into: left unsmoothed
        plan.append((norm, group, al.pop()))
    if not plan:
        return {}
    amax = channel_absmax(model_source(model, samples), [n for _, g, _ in plan for n in g])
    probe = torch.tensor([list(samples[0])[:64]], device=next(model.parameters()).device)
    with torch.no_grad():
        before = model(probe, use_cache=False).logits.float()
        out = {}
        for norm, group, a in plan:
            x = torch.stack([amax[n] for n in group]).amax(0).clamp(min=1e-5)
            wmax = torch.stack([mods[n].weight.detach().float().abs().amax(0) for n in group]).amax(0)
            s = ((x ** a) / (wmax.clamp(min=1e-5) ** (1 - a))).clamp(min=1e-5)
            norm.weight.div_(s.to(norm.weight.dtype))
            if getattr(norm, "bias", None) is not None:
                norm.bias.div_(s.to(norm.bias.dtype))
            for n in group:
                mods[n].weight.mul_(s.to(mods[n].weight.dtype))
                out[n] = s
        after = model(probe, use_cache=False).logits.float()
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    err = float((after - before).abs().max() / before.abs().max().clamp(min=1e-12))
    if err > tol:
        raise ConfigError(f"smooth_fold changed this model's output (max relative {err:.2g}): its norms do not "
                          "scale their output by their weight alone; quantize with smooth_fold=False.")
    return out
