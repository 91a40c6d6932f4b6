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
    """What each scheme is for in the decision tree."""

    scheme: str
    precision: str  # "16" | "8" | "4" | "3"
    role: str
    gpu_only_kernels: bool = False  # runs on CPU, but its fast kernels are GPU kernels


ROLES: dict[str, SchemeRole] = {r.scheme: r for r in (
    SchemeRole("bf16", "16", "no quantization: the baseline when it fits (bf16 on Ampere+ GPUs)"),
    SchemeRole("fp16", "16", "no quantization: the baseline when it fits (fp16 on pre-Ampere GPUs)"),
    SchemeRole("int8-dynamic", "8", "CPU: int8 weights and activations (torchao), the CPU pick"),
    SchemeRole("bnb-int8", "8", "8-bit for max accuracy (bitsandbytes LLM.int8())", True),
    SchemeRole("gptq-int8", "8", "8-bit for max accuracy, calibrated, serving kernels (GPTQ)", True),
    SchemeRole("awq-int4", "4", "4-bit for serving (AWQ: vLLM, TGI, transformers)", True),
    SchemeRole("gptq-int4", "4", "4-bit for serving (GPTQ: vLLM, TGI, transformers)", True),
    SchemeRole("bnb-nf4", "4", "4-bit for QLoRA fine-tuning (bitsandbytes NF4)", True),
    SchemeRole("bnb-fp4", "4", "4-bit float; NF4 is the better 4-bit bitsandbytes type (QLoRA paper)", True),
    SchemeRole("gptq-int3", "3", "3-bit, below the rule of thumb's table: measure before use", True),
)}

#: decision-tree order per situation (most preferred first); every scheme appears in each list
TREE = {
    "cpu": ["int8-dynamic", "bf16", "bnb-int8", "gptq-int8", "gptq-int4", "awq-int4", "bnb-nf4", "bnb-fp4",
            "fp16", "gptq-int3"],
    "gpu_fits": ["bf16", "fp16", "bnb-int8", "gptq-int8", "awq-int4", "gptq-int4", "bnb-nf4", "bnb-fp4",
                 "int8-dynamic", "gptq-int3"],
    "gpu_8bit": ["bnb-int8", "gptq-int8", "awq-int4", "gptq-int4", "bnb-nf4", "bnb-fp4", "gptq-int3",
                 "int8-dynamic", "bf16", "fp16"],
    "gpu_4bit": ["awq-int4", "gptq-int4", "bnb-nf4", "bnb-int8", "gptq-int8", "bnb-fp4", "gptq-int3",
                 "int8-dynamic", "bf16", "fp16"],
}
TREE_TEXT = (
    "CPU only -> int8-dynamic. GPU and the 16-bit model + KV cache + activations at the context fit -> "
    "bf16/fp16. Too large -> 8-bit (bnb-int8, gptq-int8) for max accuracy, 4-bit (awq-int4/gptq-int4 for "
    "serving, bnb-nf4 for QLoRA fine-tuning) for max compression."
)


def expected_loss(scheme: str, parameters: float) -> tuple[tuple[float, float] | None, str]:
    """(low, high) percent quality loss expected by the rule, and where that band comes from."""
    p = ROLES[scheme].precision if scheme in ROLES else None
    if p == "16":
        return SIXTEEN_BIT_LOSS, BAND_SOURCES["16"]
    if p == "8":
        return EIGHT_BIT_LOSS, BAND_SOURCES["8"]
    if p == "4":
        return size_band(parameters).four_bit_loss, BAND_SOURCES["4"]
    return None, "not covered by the rule of thumb"


# -- what we measured (llmq/advisor/measured.py) -----------------------------------------------
from llmq.advisor.measured import CPU_SPEED as MEASURED_CPU_SPEED  # noqa: E402
