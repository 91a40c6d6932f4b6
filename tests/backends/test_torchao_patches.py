"""The exact fp32 int8 GEMM (``llmq.backends.torchao_patches``): bit-identical to ``torch._int_mm``,
and torchao's int8 Linears give the same output through it."""

from __future__ import annotations

import pytest
import torch

import llmq.backends.torchao_patches as tp


@pytest.mark.parametrize("m, k, n", [(8, 576, 1536), (33, 1536, 576), (9, 2048, 64), (16, 3000, 40)])
def test_exact_int_mm_is_bit_identical(m, k, n):
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g).t()
    assert torch.equal(tp.exact_int_mm(a, b), torch._int_mm(a, b))


def test_worst_case_sums_stay_exact():
    """Every term at its largest (-128 * -128) over more than one chunk: partial sums reach 2**24."""
    a = torch.full((8, 3 * tp.CHUNK + 5), -128, dtype=torch.int8)
    b = torch.full((3 * tp.CHUNK + 5, 16), -128, dtype=torch.int8)
    out = tp.exact_int_mm(a, b)
    assert out.dtype == torch.int32 and torch.equal(out, torch._int_mm(a, b))
    assert int(out[0, 0]) == (3 * tp.CHUNK + 5) * 128 * 128


@pytest.fixture
def forced(monkeypatch):
    """The patch applied whatever this CPU is (it applies by itself only without VNNI/AMX)."""
    import torchao.kernel.intmm as intmm

    monkeypatch.setattr(tp, "needed", lambda: True)
    monkeypatch.setattr(tp, "_applied", False)
    monkeypatch.setattr(intmm, "_int_scaled_matmul_cpu", intmm._int_scaled_matmul_cpu)
    assert tp.patch_cpu_int_mm()
    return intmm


@pytest.mark.parametrize("rows", [1, 8, 64])
def test_torchao_int8_linear_gives_the_same_output(forced, rows):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(1100, 48, bias=False))
    quantize_(lin, Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    x = torch.randn(rows, 1100)
    patched = lin(x)
    assert forced._int_scaled_matmul_cpu.__wrapped__ is not forced._int_scaled_matmul_cpu
    forced._int_scaled_matmul_cpu = forced._int_scaled_matmul_cpu.__wrapped__
    assert torch.equal(patched, lin(x))


def test_not_applied_for_other_torchao_versions(monkeypatch):
    monkeypatch.setattr(tp, "package_version", lambda name: "0.99.0")
    assert not tp.needed()
    monkeypatch.setattr(tp, "package_version", lambda name: "0.18.0")
    monkeypatch.setenv("LLMQ_NO_TORCHAO_PATCHES", "1")
    assert not tp.needed()


def test_unpatch_restores_torchaos_function(forced):
    patched = forced._int_scaled_matmul_cpu
    tp.unpatch()
    assert forced._int_scaled_matmul_cpu is patched.__wrapped__ and not tp._applied
    tp.unpatch()  # idempotent
    assert forced._int_scaled_matmul_cpu is patched.__wrapped__


def test_prepare_runtime_applies_both(monkeypatch, forced):
    from llmq.backends import torchao as ta

    tp.unpatch()
    monkeypatch.setattr(ta, "_PATCHED", False)
    ta.prepare_runtime()
    assert tp._applied and ta._PATCHED
    assert forced._int_scaled_matmul_cpu.__wrapped__ is not forced._int_scaled_matmul_cpu
