"""``int8-static``: W8A8 with int8 weights and *static* int8 activation scales from calibration.

The scheme's plugin (:class:`Int8StaticBackend`): config (:class:`Int8StaticConfig`), calibration
(:func:`calibrate`), quantization (:func:`quantize_model`), saving, loading (its folders are torchao
folders; :meth:`Int8StaticBackend.recognises` them so loading runs
:func:`llmq.backends.torchao.enable_loading`), the size estimate, the advisor's role and the model
card's facts. The int8 embeddings, the tied-aware saver and the estimate are shared with
``int8-dynamic`` in :mod:`llmq.backends.torchao`.

How it is built, and why:

* Kernels and tensors are torchao's: each Linear's weight becomes a torchao ``Int8Tensor`` made by
  ``Int8StaticActivationInt8WeightConfig`` (per-row or per-tensor symmetric weights, per-tensor
  activation scale and, when asymmetric, zero point). ``FqnToConfig`` gives every Linear its own
  calibrated scale. The checkpoint is torchao's safetensors layout written by transformers'
  ``TorchAoHfQuantizer``, so it reloads with ``from_pretrained`` once ``enable_loading`` ran
  (transformers 5.24 does not list ``act_quant_scale``/``act_quant_zero_point`` among the names it
  deserializes for torchao; the patch adds them and nothing else).
* Activation statistics come from torchao's ``HistogramObserver`` (one per Linear input;
  ``llmq.backends.int8_calibration``). The
  three calibration methods only differ in how a clipping range is read off that histogram:
  ``minmax`` (the observed range), ``percentile`` (the range holding ``percentile`` % of the
  values) and ``entropy`` (TensorRT's KL-divergence threshold on the |x| histogram, 128 target
  bins, as TensorRT and ONNX Runtime define it). torch/torchao ship no percentile or KL reader and
  onnxruntime (which has one) is not a dependency, so those two short readers are written here;
  the observer, the qparam formula (``_calculate_qparams``) and the kernels are the library's.
* Weights are always symmetric: torchao's int8 matmul applies no weight zero point, as every CPU
  int8 GEMM (oneDNN/VNNI) assumes; ``sym=False`` makes the *activations* asymmetric.
* SmoothQuant smoothing (``smooth_alpha``, on by default: 0.75, down_proj off) migrates activation outlier
  channels into the weights with torchao's ``act_pre_scale`` (x / s, W * s), which the checkpoint
  stores. On SmolLM2 it is what makes int8 activations usable at all (issue #11's diagnosis).
* Automatic per-layer fallback (``dynamic_fallback``, ``max_dynamic_fraction``): some Linears see
  rare massive-activation tokens (SmolLM2: every ``down_proj``) that no per-tensor scale can hold,
  as clipping them breaks the attention sinks and keeping them zeroes everything else. Calibration
  measures, per Linear and with torchao's own kernels, the output error of its static config and
  of per-token dynamic activations (:func:`layer_errors`); a Linear whose static error exceeds
  ``dynamic_fallback`` times the dynamic one quantizes its activations per token at run time (the
  same int8 kernels, no float fallback, so the size and the compiled speed path stay), the worst
  first and at most ``max_dynamic_fraction`` of them. The choice is recorded in llmq.json
  (``activations``) and the model card.
* Embeddings and ``lm_head`` (tied: one tensor) become int8 per row by default
  (``quantize_embeddings``); ``lm_head`` multiplies that int8 weight with float activations by
  default (``lm_head_activations="float"``, torchao int8 weight-only, which Inductor lowers to its
  int8-weight matmul), since its input's outlier channels cost +0.7% perplexity as int8.

PT2E (``prepare_pt2e`` + ``X86InductorQuantizer``) was not used: it produces an exported graph
module, which does not save through ``save_pretrained`` or reload with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from llmq.backends.base import Backend, CardFacts, Scheme, torch_dtype
from llmq.backends.compressed import FORMAT as CT_FORMAT, export_torchao
from llmq.backends.int8_calibration import (METHODS, activation_qparams, calibrate, channel_absmax,  # noqa: F401
                                           fold_smoothing, input_groups, layer_errors, model_source, smooth_scales,
                                           target_linears)
from llmq.backends.int8_static_config import DEFAULT_PERCENTILE, ERROR_SAMPLES, Int8StaticConfig
from llmq.backends.torchao import (alphas_for, attach_torchao_saver, buffers_note, buffers_record, in_memory,
                                   prepare_runtime, quantize_embeddings, restore_buffers, stream_torchao,
                                   torchao_int8_estimate)


# -- quantization -------------------------------------------------------------------------------
# Three steps, so a model larger than RAM is calibrated one decoder layer at a time: ``measure``
# (statistics of the Linears of one module: the whole model, or one layer), ``decide`` (the
# per-token fallback picks the worst Linears of the whole model), ``convert`` (one module).
def selection(names: Sequence[str], cfg: Int8StaticConfig) -> tuple[set[str], dict[str, float]]:
    """``(Linears listed in dynamic_modules, SmoothQuant alpha per Linear)`` of full names."""
    from llmq.models import excluded_modules

    pats = (cfg.dynamic_modules,) if isinstance(cfg.dynamic_modules, str) else tuple(cfg.dynamic_modules)
    listed = set(excluded_modules(None, list(names), pats)) if pats else set()
    return listed, alphas_for(names, cfg.smooth_alpha)  # per-token Linears too: their outliers hurt as well


def _fallback_on(cfg: Int8StaticConfig) -> bool:
    return cfg.dynamic_fallback not in (None, "off") and cfg.max_dynamic_fraction > 0


def _dynamic(cfg: Int8StaticConfig) -> Any:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor

    wgran = PerRow() if cfg.weight_granularity == "per_channel" else PerTensor()
    return Int8DynamicActivationInt8WeightConfig(granularity=wgran, set_inductor_config=False)


def _static(cfg: Int8StaticConfig, scale: Any, zp: Any, dt: Any) -> Any:
    from torchao.quantization import Int8StaticActivationInt8WeightConfig, MappingType, PerRow, PerTensor

    wgran = PerRow() if cfg.weight_granularity == "per_channel" else PerTensor()
    return Int8StaticActivationInt8WeightConfig(
        act_quant_scale=scale.to(dt), act_quant_zero_point=None if cfg.sym else zp,
        granularity=[PerTensor(), wgran], act_mapping_type=MappingType.SYMMETRIC if cfg.sym else MappingType.ASYMMETRIC,
        set_inductor_config=False)


def measure(module: Any, source: Any, names: Sequence[str], listed: set[str], alphas: dict[str, float],
            cfg: Int8StaticConfig) -> dict[str, dict[str, Any]]:
    """Statistics of the Linears ``names`` of ``module`` from ``source`` (``int8_calibration``):
    the smoothing scale, the static scale and zero point, and (fallback on) the measured error
    ratio of static over per-token activations. ``listed`` get no static scale."""
    static = [n for n in names if n not in listed]
    pre = smooth_scales(module, channel_absmax(source, list(alphas)), alphas) if alphas else None
    obs = calibrate(source, static, sym=cfg.sym, pre_scales=pre)
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for n in static:
        out[n]["scale"], out[n]["zero_point"] = activation_qparams(obs[n], cfg.calibration_method,
                                                                   percentile=cfg.effective_percentile or DEFAULT_PERCENTILE,
                                                                   sym=cfg.sym)  # minmax, entropy: none
    if _fallback_on(cfg) and static:
        confs = {n: (_static(cfg, out[n]["scale"], out[n]["zero_point"], module.get_submodule(n).weight.dtype),
                     _dynamic(cfg)) for n in static}
        errs = layer_errors(module, source, confs, pre, limit=ERROR_SAMPLES)
        for n, (es, ed) in errs.items():
            out[n]["ratio"] = max(s_ / max(d_, 1e-12) for s_, d_ in zip(es, ed))
    for n in pre or {}:
        out[n]["smooth"] = pre[n]
    return out


def decide(stats: dict[str, dict[str, Any]], names: Sequence[str], listed: set[str],
           cfg: Int8StaticConfig, units: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """Per-Linear ``{"scale", "zero_point"}`` (plus ``"smooth"``, ``"error_ratio"``) for static
    Linears and ``{"dynamic": "fallback" | "dynamic_modules"}`` for per-token ones: the fallback
    takes the worst Linears of the whole model, at most ``max_dynamic_fraction`` of them. ``units``:
    Linears that take one choice together (``smooth_fold``'s groups, which vLLM fuses); default each alone."""
    qparams: dict[str, Any] = {n: {"dynamic": "dynamic_modules"} for n in names if n in listed}
    static = [n for n in names if n not in listed]
    for n in static:
        qparams[n] = {"scale": stats[n]["scale"], "zero_point": stats[n]["zero_point"]}
    if _fallback_on(cfg) and static:
        ratio = {n: stats[n]["ratio"] for n in static}
        budget = int(cfg.max_dynamic_fraction * len(names)) - len(listed)
        units = [list(u) for u in units] if units is not None else [[n] for n in names]
        worst = sorted((u for u in units if u[0] in ratio and max(ratio[n] for n in u) > cfg.dynamic_fallback),
                       key=lambda u: -max(ratio[n] for n in u))
        for n in static:
            qparams[n]["error_ratio"] = round(ratio[n], 3)
        for u in worst:
            if len(u) > budget:
                break
            budget -= len(u)
            for n in u:
                qparams[n] = {"dynamic": "fallback", "error_ratio": round(ratio[n], 3)}
    for n in names:
        if "smooth" in stats[n]:
            qparams[n]["smooth"] = stats[n]["smooth"]
    return qparams


def convert(module: Any, qparams: dict[str, Any], cfg: Int8StaticConfig) -> None:
    """Quantize the Linears of ``module`` named in ``qparams`` in place with torchao: smoothing
    folded into the weight (``act_pre_scale`` stored), static or per-token activations."""
    import torch
    from torchao.quantization import FqnToConfig, quantize_

    configs = {n: _dynamic(cfg) if "dynamic" in q else
               _static(cfg, q["scale"], q["zero_point"], module.get_submodule(n).weight.dtype)
               for n, q in qparams.items()}
    pre = {n: q["smooth"] for n, q in qparams.items() if "smooth" in q}
    with torch.no_grad():
        for n in pre:
            w = module.get_submodule(n).weight
            w.mul_(pre[n].to(w.dtype))
    quantize_(module, FqnToConfig(configs), filter_fn=None)
    for n in pre:
        w = module.get_submodule(n).weight
        w.act_pre_scale = (1.0 / pre[n]).to(w.dtype)


def quantize_model(model: Any, samples: Sequence[Sequence[int]], cfg: Int8StaticConfig) -> dict[str, Any]:
    """Calibrate and convert a ``model`` in memory in place (embeddings included); returns
    :func:`decide`'s per-Linear record, so callers, llmq.json and the model card can show it."""
    names = target_linears(model, cfg.skip_modules)
    listed, alphas = selection(names, cfg)
    units, folded = None, {}
    if cfg.smooth_fold:  # one smoothing and one static/per-token choice per group reading one input
        groups = input_groups(model, samples[0], names)
        units = [g for _, g in groups]
        listed = {n for u in units if listed & set(u) for n in u}
        folded = fold_smoothing(model, samples, groups, alphas) if alphas else {}
        alphas = {}  # folded into the norms: no run-time scale
    stats = measure(model, model_source(model, samples), names, listed, alphas, cfg)
    qparams = decide(stats, names, listed, cfg, units)
    convert(model, qparams, cfg)
    for n, sc in folded.items():  # recorded after convert, which would apply a "smooth" scale again
        qparams[n]["folded"] = sc
    if cfg.quantize_embeddings:
        quantize_embeddings(model, cfg.lm_head_activations)
    return qparams


def quantize_streamed(bm: Any, samples: Sequence[Sequence[int]], cfg: Int8StaticConfig, *, device: str = "cpu",
                      work_dir: Any = None, progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """A model larger than RAM (``llmq.streaming.BlockModel``): calibrated one decoder layer at a
    time (the samples' hidden states go through each layer once; each Linear's inputs are recorded
    and replayed to every statistic), the fallback decided over the whole model, then quantized
    and written block by block. Same statistics, same bytes as :func:`quantize_model`."""
    from llmq.streaming import LayerRunner, NotStreamable

    names = target_linears(bm.model, cfg.skip_modules)
    prefix = bm.layers_name + "."
    if any(not n.startswith(prefix) for n in names):
        raise NotStreamable("int8-static quantizes a Linear outside the decoder layers")
    listed, alphas = selection(names, cfg)
    runner = LayerRunner(bm, device)
    runner.start(samples)
    stats: dict[str, Any] = {}
    keep = ERROR_SAMPLES if _fallback_on(cfg) else 0
    for i in range(len(bm.layers)):
        p = f"{prefix}{i}."
        rel = [n[len(p):] for n in names if n.startswith(p)]
        with runner.layer(i) as layer:
            replay = runner.record(layer, rel, keep_outputs=keep)
            st = measure(layer, replay, rel, {n for n in rel if p + n in listed},
                         {n[len(p):]: a for n, a in alphas.items() if n.startswith(p)}, cfg)
            del replay
        stats.update({p + n: v for n, v in st.items()})
        if progress:
            progress(i + 1, len(bm.layers))
    qparams = decide(stats, names, listed, cfg)

    def conv(block: str, module: Any) -> None:
        p = block + "."
        convert(module, {n[len(p):]: q for n, q in qparams.items() if n.startswith(p)}, cfg)

    out = stream_torchao(bm, conv, serializable_config(cfg, bm.model), cfg.dtype,
                         cfg.quantize_embeddings and cfg.lm_head_activations, device=device, work_dir=work_dir)
    return out, qparams


def activation_summary(qparams: dict[str, Any], cfg: Int8StaticConfig) -> dict[str, Any]:
    """What llmq.json and the card record about the activations: how many Linears are static,
    which are per-token and why (with the measured error ratio of the automatic fallback)."""
    dyn = {n: {k: v for k, v in q.items() if k in ("dynamic", "error_ratio")}
           for n, q in qparams.items() if "dynamic" in q}
    return {"static_linears": len(qparams) - len(dyn), "dynamic_linears": len(dyn), "dynamic": dyn,
            "dynamic_fallback": cfg.dynamic_fallback, "max_dynamic_fraction": cfg.max_dynamic_fraction,
            "smooth_alpha": cfg.smooth_alpha, "smooth_fold": cfg.smooth_fold,
            "smoothed_linears": sum(1 for q in qparams.values() if "smooth" in q or "folded" in q),
            "lm_head_activations": cfg.lm_head_activations if cfg.quantize_embeddings else None}


def serializable_config(cfg: Int8StaticConfig, model: Any) -> Any:
    """The ``TorchAoConfig`` written to config.json. Scales live in the weights, so the recorded
    config carries none (a tensor-valued config cannot be JSON-serialized)."""
    import torch
    from torchao.quantization import Int8StaticActivationInt8WeightConfig, MappingType, PerRow, PerTensor
    from transformers import TorchAoConfig

    from llmq.models import excluded_modules

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    skip = excluded_modules(None, names, tuple(cfg.skip_modules)) if cfg.skip_modules else []
    placeholder = Int8StaticActivationInt8WeightConfig(
        granularity=[PerTensor(), PerRow() if cfg.weight_granularity == "per_channel" else PerTensor()],
        act_mapping_type=MappingType.SYMMETRIC if cfg.sym else MappingType.ASYMMETRIC, set_inductor_config=False)
    out_emb = model.get_output_embeddings()
    if not cfg.quantize_embeddings and out_emb is not None:
        skip = sorted(set(skip) | {n for n, m in model.named_modules() if m is out_emb})
    return TorchAoConfig(placeholder, modules_to_not_convert=skip or None,
                         include_input_output_embeddings=cfg.quantize_embeddings)


def attach_quantizer(model: Any, cfg: Int8StaticConfig) -> None:
    """Give an in-place-quantized model the transformers quantizer that writes torchao's
    safetensors layout, with int8-static's config recorded in config.json."""
    attach_torchao_saver(model, serializable_config(cfg, model))


def activation_rows(meta: dict) -> list[tuple[str, str]]:
    """The card's rows on activations, from llmq.json's ``activations`` block."""
    a = meta.get("activations")
    if not a:
        return []
    rows = [("Activations", f"static int8 per tensor in {a['static_linears']} Linears, int8 per token at run "
                            f"time in {a['dynamic_linears']}")]
    fb = sorted(n for n, d in a["dynamic"].items() if d.get("dynamic") == "fallback")
    if fb:
        rows.append(("Per-token fallback", f"{len(fb)} Linears whose static output error on the calibration data "
                                           f"was > {a['dynamic_fallback']}x the per-token one: " + ", ".join(fb)))
    if a.get("smooth_alpha") is not None:
        rows.append(("SmoothQuant alpha", str(a["smooth_alpha"])))
    if a.get("lm_head_activations"):
        rows.append(("lm_head activations", "float (int8 weight only)" if a["lm_head_activations"] == "float"
                     else "int8 per token"))
    return rows


# -- the plugin -------------------------------------------------------------------------------
STATIC_CONFIG_TYPE = "Int8StaticActivationInt8WeightConfig"


class Int8StaticBackend(Backend):
    """``int8-static``: torchao W8A8 with calibrated static activation scales."""

    name = "int8-static"
    requires = (("torchao", "torchao"),)
    extra = "torchao"
    needs_calibration = True
    quant_methods = ()  # its folders say quant_method "torchao"; recognises() claims them first
    exports = (CT_FORMAT,)
    schemes = (
        Scheme("int8-static", "int8-static", Int8StaticConfig, {}, 8,
               "torchao int8 weights and int8 activations with calibrated static scales (W8A8)", "8",
               "CPU: int8 weights and activations with static calibrated scales (torchao W8A8), about 4x "
               "smaller than fp32; needs calibration text",
               tree_rank={"cpu": 0.7, "gpu_fits": 8.5, "gpu_8bit": 7.5, "gpu_4bit": 7.5}, serve_as="w8a8-int8"),
    )

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        """Layer by layer from the checkpoint's shards (:func:`quantize_streamed`: memory bounded
        by a layer and the recorded activations); a checkpoint that cannot be streamed, and
        ``smooth_fold`` (a whole-model forward finds the groups it folds into), load whole."""
        from llmq.streaming import BlockModel, NotStreamable

        prepare_runtime()  # calibration's error measurements run int8 GEMMs
        dtype = torch_dtype(self.config.dtype)
        try:
            if self.config.smooth_fold:
                raise NotStreamable("smooth_fold runs the whole model to find its groups")
            bm = BlockModel(model_dir, dtype)
            out, self.qparams = quantize_streamed(bm, calibration.samples, self.config, device=device,
                                                  work_dir=self.options.get("work_dir"))
            self._model = out  # its buffers record (buffers_record)
            return out
        except NotStreamable:
            pass
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device)
        model.eval()
        self.qparams = quantize_model(model, calibration.samples, self.config)
        attach_quantizer(model, self.config)
        self._model = model
        return model

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        return export_torchao(in_memory(model, self.config.dtype), tokenizer, out, torch_dtype(self.config.dtype))

    def extra_metadata(self) -> dict[str, Any]:
        qp = getattr(self, "qparams", None)
        return {**({"activations": activation_summary(qp, self.config)} if qp is not None else {}),
                **buffers_record(getattr(self, "_model", None))}

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """A transformers folder whose torchao config is the static W8A8 one (from llmq or not)."""
        from llmq.models import read_json

        cfg = Path(path) / "config.json"
        if not cfg.is_file():
            return False
        qc = read_json(cfg).get("quantization_config") or {}
        qt = qc.get("quant_type") or {}
        return qc.get("quant_method") == "torchao" and isinstance(qt, dict) and \
            (qt.get("default") or {}).get("_type") == STATIC_CONFIG_TYPE

    @classmethod
    def load_kwargs(cls, path: Path, quantization_config: dict, device: str, kernel: str | None) -> dict[str, Any]:
        out = super().load_kwargs(path, quantization_config, device, kernel)
        prepare_runtime()  # transformers 5.24 drops _weight_act_quant_scale/_zero_point otherwise
        return out

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None,
             trust_remote_code: bool = False) -> tuple[Any, Any]:
        model, tok = super().load(path, device=device, dtype=dtype, kernel=kernel, trust_remote_code=trust_remote_code)
        restore_buffers(model)  # e.g. Gemma's embed_scale (see torchao.restore_buffers)
        return model, tok

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        return torchao_int8_estimate(profile, config, scheme.name)

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """One layer in fp32 (and its int8 copy), every calibration token's hidden state in and out,
        the layer's recorded Linear inputs (and the first ``ERROR_SAMPLES`` samples' outputs), the
        shard being filled; time grows with parameters x calibration tokens (the forward)."""
        from llmq.cost import calibration_bytes, layer_activation_widths, streamed

        tokens = config.n_samples * config.seqlen
        ins, outs = layer_activation_widths(profile)
        extra = calibration_bytes(profile, tokens) + 4.0 * tokens * ins + \
            4.0 * min(ERROR_SAMPLES, config.n_samples) * config.seqlen * outs
        return streamed(profile, 4, cls.estimate(profile, scheme, config, "cpu").bytes, extra,
                        work=profile.parameters * tokens)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        version = (meta.get("versions") or {}).get("torchao")
        return CardFacts(
            packages="transformers accelerate torchao llmq",
            python=("import llmq\n\n"
                    f'model, tokenizer = llmq.load("{repo}", device="cpu")  # reads the static activation scales\n'
                    "from llmq.fastpath import compile_for_cpu\n"
                    "model = compile_for_cpu(model)  # Inductor: the fast path; the first call compiles (cached)\n"
                    'inputs = tokenizer("The capital of France is", return_tensors="pt")\n'
                    "out = model.generate(**inputs, max_new_tokens=20)\n"
                    "print(tokenizer.decode(out[0], skip_special_tokens=True))"),
            tags=["torchao", "int8", "w8a8", "static-quantization"],
            rows=activation_rows(meta),
            hardware=("x86 CPUs through torch.compile (llmq.fastpath): on SmolLM2 and a 2-core AVX-512 CPU, 3.8-4.5x "
                      "fp32 decode and 2.1-2.6x prefill (AMD EPYC with VNNI; 2.3-2.8x decode on an Intel Xeon), llmq "
                      "bench, batch 1; eagerly, int8 is slower than fp32."),
            note=(f"Made with torchao {version}. Activation scales are fixed by calibration: text unlike the "
                  "calibration data may clip. Plain transformers 5.24 drops the static activation scales on "
                  "load; llmq.load (or llmq.backends.torchao.enable_loading() before from_pretrained) keeps them."
                  + buffers_note(meta)))
