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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from llmq.backends.base import Backend, CardFacts, Scheme, torch_dtype
from llmq.backends.int8_calibration import (METHODS, activation_qparams, calibrate, channel_absmax, fold_smoothing,
                                           input_groups, layer_errors, smooth_scales, target_linears)
from llmq.backends.compressed import FORMAT as CT_FORMAT
from llmq.backends.torchao import (HEAD_ACTIVATIONS, alphas_for, attach_torchao_saver, check_ct_embeddings, enable_loading,
                                   export_torchao, quantize_embeddings, torchao_int8_estimate)
from llmq.config import DTYPES, CalibratedConfig, check_choice
from llmq.errors import ConfigError

#: SmoothQuant strength per Linear pattern. down_proj is left unsmoothed: its inputs' outliers are
#: rare tokens, not channels, and smoothing made its per-token error worse (SmolLM2, issue #11)
SMOOTH_ALPHA = {"*": 0.75, "*.down_proj": "off"}
FALLBACK_RATIO: float | None = 2.0
MAX_DYNAMIC_FRACTION = 0.3
ERROR_SAMPLES = 8  # calibration samples the fallback's error measurement uses


# -- config ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Int8StaticConfig(CalibratedConfig):
    """Static W8A8. ``calibration_method``: how activation ranges are read from calibration
    (``minmax`` keeps outliers, ``percentile`` clips to ``percentile`` %, ``entropy`` minimises
    KL divergence). ``sym``: symmetric activations (zero point 0) or asymmetric. ``smooth_alpha``:
    SmoothQuant migration strength (None = off). ``quantize_embeddings``: int8 per-row embeddings
    and lm_head. ``dtype``: the compute dtype, and what unquantized tensors are stored in."""

    allowed_bits: ClassVar[tuple[int, ...]] = (8,)
    formats: ClassVar[tuple[str, ...]] = (CT_FORMAT,)
    format_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        CT_FORMAT: {"quantize_embeddings": False, "smooth_fold": True}}
    bits: int = 8
    group_size: int = -1
    sym: bool = True
    calibration_method: str = "percentile"
    percentile: float = 99.99
    weight_granularity: str = "per_channel"
    #: a number for every Linear, or {pattern: alpha} (the longest matching pattern wins; "off"
    #: for none); "off" (or None) turns smoothing off
    smooth_alpha: float | dict | str | None = field(default_factory=lambda: dict(SMOOTH_ALPHA))
    #: fold the smoothing into the norm before each group of Linears that read one input (q/k/v,
    #: gate/up: what vLLM fuses), which then share one smoothing and one static/per-token choice;
    #: no run-time scale remains, and Linears not read from a norm (o_proj) are not smoothed.
    #: format="compressed-tensors" needs it (and sets it)
    smooth_fold: bool = False
    #: Linears (names or patterns) whose activations are quantized per token at run time instead
    #: of with a static scale: SmolLM2's down_proj inputs carry outliers no per-tensor scale covers
    dynamic_modules: tuple[str, ...] = ()
    #: automatic per-layer fallback: a Linear whose static-scale output error on the calibration
    #: data (per token or in total, see :func:`layer_errors`) exceeds ``dynamic_fallback`` x its
    #: per-token-dynamic error gets per-token activations ("off": none) ...
    dynamic_fallback: float | str | None = FALLBACK_RATIO  # "off" (or None) turns it off
    #: ... at most this fraction of the Linears (the worst first), so the model stays mostly static
    max_dynamic_fraction: float = MAX_DYNAMIC_FRACTION
    quantize_embeddings: bool = True
    #: lm_head's activations: "float" (int8 weight only: SmolLM2's final hidden states have outlier
    #: channels that cost +0.7% perplexity as int8) or "int8" (per token at run time)
    lm_head_activations: str = "float"
    dtype: str = "float32"
    n_samples: int = 64
    seqlen: int = 512

    def validate(self) -> None:
        if self.calibration is None or (isinstance(self.calibration, (list, tuple)) and not self.calibration):
            raise ConfigError("int8-static needs calibration data (calibration=wikitext2, a file or a list of "
                              "strings) to fix its activation scales; use int8-dynamic to quantize without it.")
        super().validate()
        check_choice("calibration_method", self.calibration_method, METHODS)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not (0 < self.percentile <= 100):
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile!r}.")
        check_choice("weight_granularity", self.weight_granularity, ("per_channel", "per_tensor"))
        check_choice("dtype", self.dtype, DTYPES)
        if self.group_size != -1:
            raise ConfigError("int8-static quantizes weights per channel or per tensor; group_size must be -1.")
        for a in (self.smooth_alpha.values() if isinstance(self.smooth_alpha, dict) else [self.smooth_alpha]):
            if a is not None and a != "off" and (isinstance(a, (bool, str)) or not 0 <= a <= 1):
                raise ConfigError(f"smooth_alpha must be in [0, 1] (or 'off'), got {a!r}.")
        if isinstance(self.smooth_alpha, dict) and not all(isinstance(k, str) for k in self.smooth_alpha):
            raise ConfigError(f"smooth_alpha's patterns must be strings, got {list(self.smooth_alpha)!r}.")
        if not isinstance(self.quantize_embeddings, bool):
            raise ConfigError(f"quantize_embeddings must be True or False, got {self.quantize_embeddings!r}.")
        check_choice("lm_head_activations", self.lm_head_activations, HEAD_ACTIVATIONS)
        if not isinstance(self.smooth_fold, bool):
            raise ConfigError(f"smooth_fold must be True or False, got {self.smooth_fold!r}.")
        check_ct_embeddings(self)
        alphas = self.smooth_alpha.values() if isinstance(self.smooth_alpha, dict) else [self.smooth_alpha]
        if self.format == CT_FORMAT and not self.smooth_fold and any(a not in (None, "off") for a in alphas):
            raise ConfigError("format='compressed-tensors' stores no run-time SmoothQuant scale: use smooth_fold=True "
                              "(folded into the norms) or smooth_alpha='off'.")
        f = self.dynamic_fallback  # "off" rather than None: a None override means "the default"
        if f is not None and f != "off" and (isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 1):
            raise ConfigError(f"dynamic_fallback must be a number >= 1 (or 'off'), got {f!r}.")
        m = self.max_dynamic_fraction
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (0 <= m <= 1):
            raise ConfigError(f"max_dynamic_fraction must be in [0, 1], got {m!r}.")


# -- quantization -------------------------------------------------------------------------------
def quantize_model(model: Any, samples: Sequence[Sequence[int]], cfg: Int8StaticConfig) -> dict[str, Any]:
    """Calibrate and convert ``model`` in place; returns per-Linear ``{"scale", "zero_point"}``
    (plus ``"smooth"`` when smoothing, ``"error_ratio"`` when the fallback measured it) for static
    Linears and ``{"dynamic": "fallback" | "dynamic_modules"}`` for per-token ones, so callers,
    llmq.json and the model card can show them."""
    import torch
    from torchao.quantization import (FqnToConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8StaticActivationInt8WeightConfig, MappingType, PerRow, PerTensor,
                                      quantize_)

    from llmq.models import excluded_modules

    names = target_linears(model, cfg.skip_modules)
    pats = (cfg.dynamic_modules,) if isinstance(cfg.dynamic_modules, str) else tuple(cfg.dynamic_modules)
    listed = set(excluded_modules(None, names, pats)) if pats else set()
    wgran = PerRow() if cfg.weight_granularity == "per_channel" else PerTensor()

    def dynamic():
        return Int8DynamicActivationInt8WeightConfig(granularity=wgran, set_inductor_config=False)

    # the units that share one static/per-token choice: Linears reading one input when smooth_fold
    # (vLLM fuses them and takes one scheme per fused layer), else each Linear
    groups = input_groups(model, samples[0], names) if cfg.smooth_fold else [(None, [n]) for n in names]
    units = [g for _, g in groups]
    listed = {n for u in units if listed & set(u) for n in u}
    static = [n for n in names if n not in listed]
    pre, folded = None, {}
    alphas = alphas_for(names, cfg.smooth_alpha)  # per-token Linears too: their outlier channels hurt as well
    if alphas and cfg.smooth_fold:
        folded = fold_smoothing(model, samples, groups, alphas)
    elif alphas:
        pre = smooth_scales(model, channel_absmax(model, samples, list(alphas)), alphas)
    obs = calibrate(model, samples, static, sym=cfg.sym, pre_scales=pre)
    mapping = MappingType.SYMMETRIC if cfg.sym else MappingType.ASYMMETRIC
    configs: dict[str, Any] = {n: dynamic() for n in listed}
    qparams: dict[str, Any] = {n: {"dynamic": "dynamic_modules"} for n in listed}
    for n in static:
        scale, zp = activation_qparams(obs[n], cfg.calibration_method, percentile=cfg.percentile, sym=cfg.sym)
        dt = model.get_submodule(n).weight.dtype
        configs[n] = Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale.to(dt), act_quant_zero_point=None if cfg.sym else zp,
            granularity=[PerTensor(), wgran], act_mapping_type=mapping, set_inductor_config=False)
        qparams[n] = {"scale": scale, "zero_point": zp}
    if cfg.dynamic_fallback not in (None, "off") and static and cfg.max_dynamic_fraction > 0:
        errs = layer_errors(model, samples[:ERROR_SAMPLES], {n: (configs[n], dynamic()) for n in static}, pre)
        ratio = {n: max(s_ / max(d_, 1e-12) for s_, d_ in zip(es, ed)) for n, (es, ed) in errs.items()}
        budget = int(cfg.max_dynamic_fraction * len(names)) - len(listed)
        worst = sorted((u for u in units if u[0] in ratio and max(ratio[n] for n in u) > cfg.dynamic_fallback),
                       key=lambda u: -max(ratio[n] for n in u))
        for n in static:
            qparams[n]["error_ratio"] = round(ratio[n], 3)
        for u in worst:
            if len(u) > budget:
                break
            budget -= len(u)
            for n in u:
                configs[n] = dynamic()
                qparams[n] = {"dynamic": "fallback", "error_ratio": round(ratio[n], 3)}
    if pre is not None:
        with torch.no_grad():
            for n in pre:
                w = model.get_submodule(n).weight
                w.mul_(pre[n].to(w.dtype))
    quantize_(model, FqnToConfig(configs), filter_fn=None)
    if pre is not None:
        for n in pre:
            w = model.get_submodule(n).weight
            w.act_pre_scale = (1.0 / pre[n]).to(w.dtype)
            qparams[n]["smooth"] = pre[n]
    for n, sc in folded.items():
        qparams[n]["smooth"] = sc
    if cfg.quantize_embeddings:
        quantize_embeddings(model, cfg.lm_head_activations)
    return qparams


def activation_summary(qparams: dict[str, Any], cfg: Int8StaticConfig) -> dict[str, Any]:
    """What llmq.json and the card record about the activations: how many Linears are static,
    which are per-token and why (with the measured error ratio of the automatic fallback)."""
    dyn = {n: {k: v for k, v in q.items() if k in ("dynamic", "error_ratio")}
           for n, q in qparams.items() if "dynamic" in q}
    return {"static_linears": len(qparams) - len(dyn), "dynamic_linears": len(dyn), "dynamic": dyn,
            "dynamic_fallback": cfg.dynamic_fallback, "max_dynamic_fraction": cfg.max_dynamic_fraction,
            "smooth_alpha": cfg.smooth_alpha, "smooth_fold": cfg.smooth_fold,
            "smoothed_linears": sum(1 for q in qparams.values() if "smooth" in q),
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
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(self.config.dtype),
                                                     device_map=device)
        model.eval()
        self.qparams = quantize_model(model, calibration.samples, self.config)
        attach_quantizer(model, self.config)
        return model

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        return export_torchao(model, tokenizer, out, torch_dtype(self.config.dtype))

    def extra_metadata(self) -> dict[str, Any]:
        qp = getattr(self, "qparams", None)
        return {"activations": activation_summary(qp, self.config)} if qp is not None else {}

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
        enable_loading()  # transformers 5.24 drops _weight_act_quant_scale/_zero_point otherwise
        return out

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        return torchao_int8_estimate(profile, config, scheme.name)

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
                  "load; llmq.load (or llmq.backends.torchao.enable_loading() before from_pretrained) keeps them."))
