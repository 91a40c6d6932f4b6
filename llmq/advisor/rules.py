"""The rule of thumb and the hardware decision tree, as data, plus what we measured against them.

Source of the rule of thumb: the llmq project brief (its "seeds": the quantization notes this
project started from). It is a prior, not a measurement: ``llmq run --scheme auto`` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RULE_SOURCE = "llmq project brief, model-size rule of thumb (expected quality loss of 4-bit weights)"


@dataclass(frozen=True)
class SizeBand:
    label: str
    low: float  # parameters, inclusive
    high: float  # exclusive
    verdict: str  # what the rule says
    four_bit_loss: tuple[float, float]  # expected quality loss of 4-bit, percent
    prefer: str  # "16" | "8" | "4": the lowest precision the rule is happy with

    def contains(self, n: float) -> bool:
        return self.low <= n < self.high


#: the rule of thumb, verbatim from the brief
SIZE_BANDS: tuple[SizeBand, ...] = (
    SizeBand("<100M", 0, 100e6, "avoid 4-bit", (5.0, 15.0), "8"),
    SizeBand("100M-1B", 100e6, 1e9, "prefer 8-bit", (2.0, 5.0), "8"),
    SizeBand("1B-10B", 1e9, 10e9, "4-bit works", (1.0, 3.0), "4"),
    SizeBand("10B+", 10e9, math.inf, "excellent for 4-bit", (1.0, 2.0), "4"),
)

#: 8-bit and 16-bit are outside the rule's table; these bands are the common prior (LLM.int8(),
#: Dettmers et al. 2022: no measurable degradation from 8-bit weights), stated as such.
EIGHT_BIT_LOSS = (0.0, 1.0)
SIXTEEN_BIT_LOSS = (0.0, 0.1)
BAND_SOURCES = {
    "4": RULE_SOURCE,
    "8": "prior: LLM.int8() (Dettmers et al. 2022) reports no measurable loss from 8-bit weights",
    "16": "prior: fp16/bf16 rounding of fp32 weights",
}


def size_band(parameters: float) -> SizeBand:
    for b in SIZE_BANDS:
        if b.contains(parameters):
            return b
    return SIZE_BANDS[-1]  # pragma: no cover


@dataclass(frozen=True)
class SchemeRole:
    """What each scheme is for in the decision tree (declared by the scheme's plugin)."""

    scheme: str
    precision: str  # "16" | "8" | "4" | "3"
    role: str
    gpu_only_kernels: bool = False  # runs on CPU, but its fast kernels are GPU kernels


SITUATIONS = ("cpu", "gpu_fits", "gpu_8bit", "gpu_4bit")


def roles() -> dict[str, SchemeRole]:
    """Every registered scheme's advisor role, from its plugin."""
    from llmq.schemes import SCHEMES

    out = {}
    for name in SCHEMES:
        s = SCHEMES.get(name)
        out[name] = SchemeRole(name, s.precision, s.role, s.gpu_only_kernels)
    return out


def tree() -> dict[str, list[str]]:
    """Decision-tree order per situation (most preferred first), from each scheme's ``tree_rank``;
    a scheme that names no rank for a situation comes after those that do, in registry order."""
    from llmq.schemes import SCHEMES

    names = list(SCHEMES)
    return {sit: sorted(names, key=lambda n: (SCHEMES.get(n).tree_rank.get(sit, float("inf")), names.index(n)))
            for sit in SITUATIONS}


def __getattr__(name: str):
    """``ROLES`` and ``TREE``: views of the registry, recomputed so a plugin registered later shows up."""
    if name == "ROLES":
        return roles()
    if name == "TREE":
        return tree()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TREE_TEXT = (
    "CPU only -> int8-dynamic. GPU and the 16-bit model + KV cache + activations at the context fit -> "
    "bf16/fp16. Too large -> 8-bit (bnb-int8, gptq-int8) for max accuracy, 4-bit (awq-int4/gptq-int4 for "
    "serving, bnb-nf4 for QLoRA fine-tuning) for max compression."
)


def expected_loss(scheme: str, parameters: float) -> tuple[tuple[float, float] | None, str]:
    """(low, high) percent quality loss expected by the rule, and where that band comes from."""
    from llmq.schemes import SCHEMES

    p = SCHEMES.get(scheme).precision if scheme in SCHEMES else None
    if p == "16":
        return SIXTEEN_BIT_LOSS, BAND_SOURCES["16"]
    if p == "8":
        return EIGHT_BIT_LOSS, BAND_SOURCES["8"]
    if p == "4":
        return size_band(parameters).four_bit_loss, BAND_SOURCES["4"]
    return None, "not covered by the rule of thumb"


# -- what we measured (llmq/advisor/measured.py) -----------------------------------------------
from llmq.advisor.measured import CPU_SPEED as MEASURED_CPU_SPEED  # noqa: E402
