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
