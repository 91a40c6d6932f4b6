from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from llmq.backends.base import Backend
from llmq.config import AWQConfig
from llmq.errors import ConfigError
from llmq.models import excluded_modules, linear_shapes


def ensure_cpu_workers() -> None:
    """GPTQModel 7.7 sizes a 'model_loader:cpu' pool of 2 workers and dies on machines where its
    parent pool gets 1 (2-core machines) unless ``GPTQMODEL_CPU_WORKERS >= 2``."""
    cur = os.environ.get("GPTQMODEL_CPU_WORKERS")
    if cur is None or (cur.isdigit() and int(cur) < 2):
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, os.cpu_count() or 2))


def fitting_group_sizes(in_features: list[int]) -> list[int]:
    g = 0
    for n in in_features:
        g = math.gcd(g, n)
    return [s for s in (256, 128, 64, 32, 16) if g and g % s == 0]


class GPTQModelBackend(Backend):
    """GPTQ and AWQ through GPTQModel, the maintained successor of AutoGPTQ/AutoAWQ that
    transformers itself uses to load both formats."""

    name = "gptqmodel"
    requires = (("gptqmodel", "gptqmodel"), ("optimum", "optimum"))
    extra = "gptq"
    needs_calibration = True

    @property
    def method(self) -> str:
        return "awq" if isinstance(self.config, AWQConfig) else "gptq"

    def quantized_linears(self, config: Any) -> dict[str, tuple[int, int]]:
        shapes = linear_shapes(config)
        skip = set(excluded_modules(config, list(shapes), self.config.skip_modules))
        return {n: s for n, s in shapes.items() if n not in skip and ".layers." in f".{n}"}

    def validate_model(self, source: Any) -> None:
        """Kernels (and AWQ's packing) need ``in_features % group_size == 0``: fail now, not after
        minutes of calibration, naming the layers and the group sizes that fit."""
        gs = self.config.group_size
        if gs == -1:
            return
        shapes = self.quantized_linears(source.config())
        bad = {n: s[0] for n, s in shapes.items() if s[0] % gs}
        if not bad:
            return
        widths = sorted(set(bad.values()))
        example = next(iter(bad))
        fits = fitting_group_sizes([s[0] for s in shapes.values()])
        hint = f"group sizes that fit this model: {', '.join(map(str, fits))}" if fits else "use group_size=-1"
        raise ConfigError(
            f"group_size={gs} does not divide in_features {widths} of {len(bad)} layers "
            f"(e.g. {example}); {hint} (--group-size)."
        )

    def gptqmodel_config(self, config: Any) -> Any:
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        c = self.config
        skip = excluded_modules(config, list(linear_shapes(config)), c.skip_modules)
        dynamic = {f"-:^{re.escape(n)}$": {} for n in skip if n != "lm_head"} or None
        if isinstance(c, AWQConfig):
            return QuantizeConfig(
                bits=c.bits, group_size=c.group_size, sym=c.sym, quant_method=METHOD.AWQ,
                format=FORMAT.GEMM if c.format == "gemm" else FORMAT.GEMV, dynamic=dynamic,
                offload_to_disk=False,
            )
        return QuantizeConfig(
            bits=c.bits, group_size=c.group_size, sym=c.sym, desc_act=c.desc_act,
            act_group_aware=c.act_group_aware, damp_percent=c.damp_percent, dynamic=dynamic,
            offload_to_disk=False,
        )

    def post_quant_kernel(self, device: str) -> str:
        """The kernel GPTQModel packs the fresh weights with. On CUDA its ``auto`` choice for GPTQ on
        Hopper is Machete, which downloads CUTLASS from GitHub at first use (fails offline); the
        torch kernel packs everywhere and does not touch the network."""
        if device.startswith("cuda") and self.method == "gptq":
            return "torch"
        return "auto"

    def quantize_dtype(self, device: str) -> Any:
        """fp32 for AWQ on CPU: GPTQModel's bf16 default there ruins AWQ's searches (see
        ``gptqmodel_patches``); fp32 needs the packing patch, so fall back to GPTQModel's choice
        where the patch does not apply. GPU and GPTQ: GPTQModel's own choice."""
        import torch

        if self.method == "awq" and device == "cpu":
            from llmq.backends import gptqmodel_patches

            if gptqmodel_patches.apply():
                return torch.float32
        return None

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        ensure_cpu_workers()
        from gptqmodel import GPTQModel
        from transformers import AutoConfig

        from llmq.backends import gptqmodel_patches

        gptqmodel_patches.redirect_logs()
        qcfg = self.gptqmodel_config(AutoConfig.from_pretrained(model_dir))
        dtype = self.quantize_dtype(device)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = GPTQModel.load(str(model_dir), qcfg, device=device, **kwargs)
        model.quantize(calibration.as_gptqmodel(), batch_size=1, backend=self.post_quant_kernel(device))
        return model

    def save(self, model: Any, out: Path) -> None:
        model.save(str(out))

    def quantization_config(self, model: Any) -> dict | None:
        return model.quantize_config.to_dict()
