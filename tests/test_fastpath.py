"""llmq.fastpath: the compiled CPU path generates what the eager model generates (tiny random Llama,
int8-static with the default float-activation lm_head, the case freezing exists for)."""

from __future__ import annotations

TEXT = ["The quick brown fox jumps over the lazy dog. " * 40, "Python is a programming language. " * 40]


def test_compiled_frozen_int8_static_generates_what_eager_does(tiny_model_dir, tmp_path):
    import torch

    import llmq
    from llmq.fastpath import compile_for_cpu, is_torchao_quantized

    out = llmq.quantize(str(tiny_model_dir), "int8-static", device="cpu", calibration=TEXT, n_samples=4,
                        seqlen=32).save(tmp_path / "q")
    model, _ = llmq.load(out, device="cpu")
    assert is_torchao_quantized(model)
    x = torch.tensor([list(range(5, 29))])
    kw = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    with torch.no_grad():
        eager_logits = model(x).logits
        eager = model.generate(x, **kw)
        compiled = compile_for_cpu(model)
        assert compile_for_cpu(compiled) is compiled  # safe to call twice
        assert model.config._attn_implementation == "llmq_sdpa"  # 4 query heads over 2 KV heads
        fast = model.generate(x, **kw)
        fast_logits = model(x).logits
    assert torch.isfinite(fast_logits).all()
    # Inductor reorders float reductions: close, not bit-equal; the greedy tokens must match
    assert (fast_logits - eager_logits).abs().max() <= 1e-3 * eager_logits.abs().max()
    assert fast.tolist() == eager.tolist()


def test_int_mm_lowering_is_safe_for_one_row_in_both_inductor_wrappers(tmp_path, monkeypatch):
    """pytorch/pytorch#195066: CPU ``_int_mm`` ignores a (1, K) operand whose row stride is 0, the
    view Inductor emits for one decode token. With llmq's lowering patch the compiled result is
    exact with the Python wrapper and with the C++ wrapper (``cpp_wrapper``, off in ``compile_for_cpu``
    but a user's choice), which the earlier Python-level workaround did not reach."""
    import torch
    import torch._inductor.config as ic

    from llmq.fastpath import patch_int_mm

    assert patch_int_mm() and patch_int_mm()  # idempotent
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 64, generator=gen)
    w = torch.randint(-128, 127, (96, 64), dtype=torch.int8, generator=gen)

    def f(x, w):  # torchao's activation quantization, then the int8 GEMM on the (1, K) view
        q = torch.clamp(torch.round(x / 0.02), -128, 127).to(torch.int8)
        return torch._int_mm(q.view(-1, 64), w.t())

    ref = f(x, w)
    for cpp in (False, True):
        torch._dynamo.reset()
        with ic.patch(cpp_wrapper=cpp, fx_graph_cache=False):
            out = torch.compile(f)(x, w)
        assert torch.equal(out, ref), f"cpp_wrapper={cpp}"


def _compile_frozen(module, x, tmp_path, monkeypatch):
    """(output, generated code) of ``module(x)`` compiled as ``compile_for_cpu`` compiles: frozen weights."""
    import torch
    import torch._inductor.config as ic
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    with torch.no_grad(), ic.patch(freezing=True, fx_graph_cache=False):
        out, code = run_and_get_code(torch.compile(module), x)
    return out, "\n".join(code)


def test_few_row_int8_gemms_take_the_cpp_gemm_template_and_stay_exact(tmp_path, monkeypatch):
    """Decode's int8 GEMMs (fewer than 16 rows) against a frozen int8 weight lower to Inductor's C++
    GEMM template (int8 values as bfloat16, float32 accumulation), not oneDNN's ``_int_mm``, and
    give the same int32 result; more rows (prefill, evaluation) keep ``_int_mm``."""
    import torch

    from llmq.fastpath import FEW_ROWS, patch_int_mm

    assert patch_int_mm()

    class Int8Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.register_buffer("w", torch.randint(-128, 128, (96, 256), dtype=torch.int8, generator=g))

        def forward(self, x):  # torchao's static activation quantization, then the int8 GEMM
            q = torch.clamp(torch.round(x / 0.02), -128, 127).to(torch.int8)
            return torch._int_mm(q, self.w.t())

    m = Int8Linear().eval()
    gen = torch.Generator().manual_seed(1)
    for rows, few in ((1, True), (FEW_ROWS - 1, True), (FEW_ROWS + 16, False)):
        x = torch.randn(rows, 256, generator=gen)  # ~1/3 of the values saturate at +-127/128
        out, code = _compile_frozen(m, x, tmp_path, monkeypatch)
        assert torch.equal(out, m(x)), rows
        assert ("micro_gemm" in code) == few and ("extern_kernels._int_mm(" in code) != few, rows


def test_uint8_activation_gemms_keep_onednn_int_mm_and_stay_exact(tmp_path, monkeypatch):
    """On CPUs with AVX512-VNNI and no AMX torchao quantizes activations to uint8 (u8s8, its
    ``_int_scaled_matmul_cpu``): those GEMMs keep oneDNN's VNNI ``_int_mm`` at every row count (the
    template route is for s8s8), through llmq's restriding lowering, with the exact int32 result."""
    import torch

    from llmq.fastpath import patch_int_mm

    assert patch_int_mm()
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (96, 256), dtype=torch.int8, generator=g)

    class U8Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", w)

        def forward(self, x):  # torchao's u8s8 form: int8 values shifted by 128
            q = torch.clamp(torch.round(x / 0.02), -128, 127).to(torch.int32).add(128).to(torch.uint8)
            return torch._int_mm(q, self.w.t())

    m = U8Linear().eval()
    for rows in (1, 8):
        x = torch.randn(rows, 256, generator=g)
        out, code = _compile_frozen(m, x, tmp_path, monkeypatch)
        assert torch.equal(out, m(x)), rows
        assert "extern_kernels._int_mm(" in code and "micro_gemm" not in code, rows


def test_few_rows_head_runs_the_int8_lm_head_on_the_template_and_leaves_other_heads_alone(tmp_path, monkeypatch):
    import copy

    import torch
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    from llmq.fastpath import FEW_ROWS, few_rows_head

    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 96, bias=False)
    head = copy.deepcopy(plain)
    quantize_(head, Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False))
    fast = few_rows_head(head)
    assert fast is not head and few_rows_head(plain) is plain
    with_bias = torch.nn.Linear(64, 96)
    quantize_(with_bias, Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False))
    assert few_rows_head(with_bias) is with_bias
    assert not dict(fast.state_dict(keep_vars=True)).keys() - {"head.weight"}  # nothing new is saved

    w, s = head.weight.qdata.float(), head.weight.scale.reshape(-1)
    x = torch.randn(1, 1, 64)
    out, code = _compile_frozen(fast, x, tmp_path, monkeypatch)
    # the documented contract: bfloat16 activations, exact int8 weight, float32 products and result
    want = (x.to(torch.bfloat16).float() @ w.t()) * s
    assert "micro_gemm" in code and out.dtype == torch.float32 and out.shape == (1, 1, 96)
    assert torch.allclose(out, want, rtol=1e-5, atol=1e-6)
    assert (out - head(x)).abs().max() <= 1e-2 * head(x).abs().max()  # only the bf16 rounding of x
    many = torch.randn(1, FEW_ROWS, 64)
    out, code = _compile_frozen(fast, many, tmp_path, monkeypatch)
    assert "llmq.int8_weight_mm" not in code and "micro_gemm" not in code
    assert torch.allclose(out, head(many), rtol=1e-4, atol=1e-5)


def test_one_token_gqa_sdpa_equals_repeat_kv_attention_and_leaves_other_cases_to_transformers():
    """One decode token attends per KV head (no K/V copies) with the result of transformers' repeat_kv
    path; more tokens, per-head masks and plain multi-head attention go to transformers' sdpa as they are."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    from llmq.fastpath import one_token_gqa_sdpa

    class Attn(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    m = Attn()
    k, v = torch.randn(2, 3, 40, 16), torch.randn(2, 3, 40, 16)
    mask = torch.zeros(2, 1, 1, 40, dtype=torch.bool)
    mask[0, ..., :25] = True
    mask[1, ..., :31] = True
    q = torch.randn(2, 9, 1, 16)
    out, _ = one_token_gqa_sdpa(m, q, k, v, mask, scaling=0.25)
    ref = F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask, scale=0.25)
    assert out.shape == (2, 1, 9, 16)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    # the masked slots do not matter: changing them leaves the output as it was
    k2 = k.clone()
    k2[0, :, 25:] = 1e4
    torch.testing.assert_close(one_token_gqa_sdpa(m, q, k2, v, mask, scaling=0.25)[0], out)
    for q_, mask_ in ((torch.randn(2, 9, 4, 16), torch.ones(2, 1, 4, 40, dtype=torch.bool)),  # prefill
                      (q, torch.ones(2, 9, 1, 40, dtype=torch.bool))):  # a mask per head
        a, _ = one_token_gqa_sdpa(m, q_, k, v, mask_, scaling=0.25)
        b, _ = sdpa_attention_forward(m, q_, k, v, mask_, scaling=0.25)
        assert torch.equal(a, b)
    mha = Attn()
    mha.num_key_value_groups = 1  # plain multi-head attention
    q3 = torch.randn(2, 3, 1, 16)
    assert torch.equal(one_token_gqa_sdpa(mha, q3, k, v, mask, scaling=0.25)[0],
                       sdpa_attention_forward(mha, q3, k, v, mask, scaling=0.25)[0])


def test_compiled_graphs_go_to_llmqs_cache_folder_unless_the_user_chose_one(monkeypatch, tmp_path):
    """Importing torchao sets $TORCHINDUCTOR_CACHE_DIR to torch's default; that is not the user's choice."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from llmq.fastpath import CACHE_ENV, CACHE_VERSION, cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    ours = tmp_path / ".cache" / "llmq" / f"inductor-{CACHE_VERSION}"
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir() == ours
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())
    assert cache_dir() == ours
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
