"""What a serving engine runs fast on a GPU generation: ``llmq advise --serve vllm``.

Each scheme declares how vLLM serves its folders (``Scheme.serve_as``: ``w8a8-fp8``, ``w8a8-int8``,
``w4a16``, ``w8a16``, ``16-bit``, or ``""`` for formats vLLM reads only through slow generic paths).
Which kernel runs each layout on which GPU is vLLM's, from its documentation (not measured by
llmq, whose tests have no GPU):

* the supported-hardware table (docs.vllm.ai, Features > Quantization > Supported Hardware): INT8
  W8A8 on Turing (SM 7.5) and newer; FP8 W8A8 on Ada (8.9) and Hopper (9.0); Marlin (GPTQ/AWQ/FP8
  weight-only kernels) on Ampere (8.0) and newer;
* the FP8 W8A8 page: Ada, Hopper and Blackwell run FP8 on tensor cores; Turing/Ampere run FP8
  checkpoints as weight-only W8A16 through FP8 Marlin.

Ranking: decoding one sequence is memory-bound, so at batch 1 the fewest weight bytes win (W4A16
through Marlin); at larger batches matmul throughput wins, so W8A8 on tensor cores comes first
(FP8 where the GPU has FP8, INT8 on Ampere and Turing).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmq.errors import ConfigError

ENGINES = ("vllm",)
#: GPU generation -> the smallest CUDA compute capability of it
ARCHS = {"turing": (7, 5), "ampere": (8, 0), "ada": (8, 9), "hopper": (9, 0), "blackwell": (10, 0)}
SOURCE = ("vLLM docs: Features > Quantization > Supported Hardware, and the FP8 W8A8 page "
          "(docs.vllm.ai); kernel support, not llmq measurements")


@dataclass(frozen=True)
class Served:
    """How vLLM runs one layout on one GPU generation."""

    kernel: str
    why: str
    rank: float  # lower first
    fast: bool = True  # False: runs, but through a path llmq would not pick for speed


def arch_of(capability: tuple[int, int]) -> str:
    """The GPU generation of a compute capability (e.g. (8, 6) -> ampere)."""
    fits = [a for a, cc in ARCHS.items() if tuple(capability) >= cc]
    if not fits:
        raise ConfigError(f"compute capability {capability[0]}.{capability[1]} is older than Turing (7.5): vLLM's "
                          "quantized kernels do not run there.")
    return fits[-1]


def resolve_arch(gpu_arch: str | None, capabilities: list[tuple[int, int] | None]) -> str:
    """``--gpu-arch`` when given, else the detected GPU's generation."""
    if gpu_arch is not None:
        a = gpu_arch.strip().lower()
        if a not in ARCHS:
            raise ConfigError(f"--gpu-arch {gpu_arch!r} is invalid; choose one of {', '.join(ARCHS)}.")
        return a
    caps = [c for c in capabilities if c]
    if not caps:
        raise ConfigError("--serve needs the GPU generation: pass --gpu-arch (turing, ampere, ada, hopper, "
                          "blackwell); no GPU is visible here.")
    return arch_of(max(caps))


def check_engine(engine: str) -> str:
    e = engine.strip().lower()
    if e not in ENGINES:
        raise ConfigError(f"--serve {engine!r} is invalid; llmq advises for: {', '.join(ENGINES)}.")
    return e


def vllm(layout: str, arch: str, batch_size: int) -> Served:
    """How vLLM serves ``layout`` on ``arch`` at ``batch_size`` (see the module docstring)."""
    cc = ARCHS[arch]
    fp8_cores, marlin = cc >= ARCHS["ada"], cc >= ARCHS["ampere"]
    latency = batch_size <= 1
    if layout == "w8a8-fp8":
        if fp8_cores:
            return Served("FP8 W8A8 (CUTLASS, FP8 tensor cores)",
                          f"{arch}: FP8 weights and per-token FP8 activations on FP8 tensor cores, half of bf16's "
                          "weight bytes; the 8-bit pick here", 1 if latency else 0)
        return Served("FP8 Marlin (weight-only W8A16)",
                      f"{arch} has no FP8 tensor cores: vLLM runs FP8 as weight-only W8A16 (FP8 Marlin), memory "
                      "saving only; W8A8 INT8 is the 8-bit pick here", 5)
    if layout == "w8a8-int8":
        if fp8_cores:
            return Served("INT8 W8A8 (CUTLASS)", f"{arch}: int8 weights and activations on INT8 tensor cores; "
                          "FP8 W8A8 runs as fast here with float activations", 2 if latency else 1)
        return Served("INT8 W8A8 (CUTLASS)", f"{arch} has no FP8: INT8 W8A8 on INT8 tensor cores is the "
                      "8-bit pick here", 1 if latency or not marlin else 0)
    if layout == "w4a16":
        if marlin:
            return Served("Marlin W4A16", f"{arch}: 4-bit weights through Marlin, a quarter of bf16's weight bytes: "
                          "the batch-1 latency pick (decoding is memory-bound)"
                          + ("" if latency else "; at this batch W8A8 keeps up better"), 0 if latency else 2)
        return Served("GPTQ/AWQ kernels", f"{arch} predates Marlin (Ampere+): vLLM's older GPTQ/AWQ kernels, "
                      "slower", 3)
    if layout == "w8a16":
        return Served("Marlin W8A16" if marlin else "GPTQ kernels",
                      f"{arch}: 8-bit weights with 16-bit activations: memory saving, less speed-up than W8A8", 3)
    if layout == "16-bit":
        return Served("unquantized", "vLLM's unquantized path: the baseline the quantized layouts beat", 4)
    return Served("generic", "vLLM has no fast kernel for this checkpoint format (bitsandbytes, GGUF, torchao "
                  "and 3-bit load through generic or experimental paths); not a vLLM pick", 9, fast=False)
