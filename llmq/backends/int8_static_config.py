"""The int8-static (static W8A8) scheme's settings, apart from its plugin (``int8_static``) so
both stay readable: calibration method, symmetry, SmoothQuant strength, the per-token fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from llmq.backends.compressed import FORMAT as CT_FORMAT
from llmq.backends.int8_calibration import METHODS
from llmq.backends.torchao import HEAD_ACTIVATIONS, check_ct_embeddings
from llmq.config import DTYPES, CalibratedConfig, check_choice
from llmq.errors import ConfigError

#: SmoothQuant strength per Linear pattern. down_proj is left unsmoothed: its inputs' outliers are
#: rare tokens, not channels, and smoothing made its per-token error worse (SmolLM2, issue #11)
SMOOTH_ALPHA = {"*": 0.75, "*.down_proj": "off"}
FALLBACK_RATIO: float | None = 2.0
MAX_DYNAMIC_FRACTION = 0.3
ERROR_SAMPLES = 8  # calibration samples the fallback's error measurement uses
DEFAULT_PERCENTILE = 99.99  # calibration_method="percentile": the share of |x| the range holds


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
    #: ``calibration_method="percentile"`` only (None: 99.99); refused with the other methods, which
    #: would ignore it while llmq.json recorded it
    percentile: float | None = None
    weight_granularity: str = "per_channel"
    #: a number for every Linear, or {pattern: alpha} (the longest matching pattern wins; "off"
    #: for none); "off" (or None) turns smoothing off
    smooth_alpha: float | dict | str | None = field(default_factory=lambda: dict(SMOOTH_ALPHA))
    #: fold the smoothing into the norm before each group of Linears that read one input (q/k/v,
    #: gate/up: what vLLM fuses), which then share one smoothing and one static/per-token choice;
    #: no run-time scale remains, and Linears not read from a norm (o_proj) are not smoothed. The
    #: model is then quantized in memory, not streamed. format="compressed-tensors" needs it (and sets it)
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
        if self.percentile is not None and self.calibration_method != "percentile":
            raise ConfigError(f"percentile applies to calibration_method='percentile' only; "
                              f"{self.calibration_method!r} ignores it: drop --percentile or use "
                              "--calibration-method percentile.")
        if self.percentile is not None and (isinstance(self.percentile, bool) or not isinstance(
                self.percentile, (int, float)) or not (0 < self.percentile <= 100)):
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

    @property
    def effective_percentile(self) -> float | None:
        """The percentile the ``percentile`` method clips at; None for the methods that use none."""
        if self.calibration_method != "percentile":
            return None
        return DEFAULT_PERCENTILE if self.percentile is None else float(self.percentile)

    def to_dict(self) -> dict[str, Any]:
        """llmq.json records the percentile used, and none for methods that use none."""
        out = super().to_dict()
        out["percentile"] = self.effective_percentile
        return out
