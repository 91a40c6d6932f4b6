"""A .gguf on both sides of compare is scored on llama.cpp (perplexity, KLD, a task) under the same
protocol strings as the transformers path, and the report names the runtime; without
llama-cpp-python the same call dequantizes through transformers and says so."""

from __future__ import annotations

import math

import pytest

FAST = {"ppl": "wikitext2", "limit": 4, "seqlen": 128, "speed": False, "progress": False}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """A tiny random Llama (SmolLM2's tokenizer), its F32 GGUF and its Q4_0 GGUF output folder."""
    from llmq.backends.gguf import quantizer as G
    from llmq.testing_gguf import tiny_model

    d = tmp_path_factory.mktemp("llamacpp")
    src = tiny_model(d / "src", "llama")
    f32 = d / "f32" / "tiny-F32.gguf"
    f32.parent.mkdir()
    G.convert(src, f32, "f32")
    q = G.quantize_model(src, d / "q4", G.config_for("gguf-q4_0"), name="tiny-Q4_0")
    return src, f32, q.path.parent


def test_compare_gguf_to_gguf_on_llama_cpp(ggufs, tmp_path):
    from llmq.eval import compare, evaluate

    src, f32, q4 = ggufs
    r = compare(str(f32), str(q4), tasks=["arc_easy"], out_dir=tmp_path / "rep", **FAST)
    o, q = r["original"], r["quantized"]
    assert o["runtime"] == q["runtime"] == "llama.cpp"
    assert q["kld"]["tokens"] == q["perplexity"]["tokens"] == 4 * 127 and 0 < q["kld"]["mean"] < 5
    assert q["perplexity"]["value"] > o["perplexity"]["value"] > 1
    assert q["tasks"]["arc_easy"]["n"] == o["tasks"]["arc_easy"]["n"] == 4
    assert q["size_bytes"] == (q4 / "tiny-Q4_0.gguf").stat().st_size < o["size_bytes"] == f32.stat().st_size
    assert q["param_memory_bytes"] == q["size_bytes"]
    # the same protocol strings as the transformers path, and the F32 file scores like the fp32 source
    hf = evaluate(str(src), tasks=["arc_easy"], **FAST).to_dict()
    assert hf["model"]["runtime"] == "transformers"
    assert r["protocol"]["ppl"] == hf["protocol"]["ppl"]
    assert r["protocol"]["tasks"]["arc_easy"] == hf["protocol"]["tasks"]["arc_easy"]
    assert abs(o["perplexity"]["value"] / hf["model"]["perplexity"]["value"] - 1) < 0.005
    assert o["tasks"]["arc_easy"]["acc"] == hf["model"]["tasks"]["arc_easy"]["acc"]


def test_gguf_without_llama_cpp_python_is_scored_on_transformers(ggufs, monkeypatch):
    from llmq.backends.gguf import plugin as P
    from llmq.eval import evaluate

    _, _, q4 = ggufs
    monkeypatch.setattr(P, "llama_cpp_installed", lambda: False)
    m = evaluate(str(q4), **FAST).to_dict()["model"]
    assert m["runtime"] == "transformers (dequantized GGUF)" and math.isfinite(m["perplexity"]["value"])


def test_bench_runs_a_gguf_on_llama_cpp_batch_1(ggufs):
    """`llmq bench` on a .gguf (file or output folder) uses the GGUF plugin's llama.cpp runner: one
    row per model at batch 1 (larger batches are skipped), the file's size, ratios to the first."""
    from llmq import benchmark as B

    src, f32, q4 = ggufs
    rows = B.bench([str(f32), str(q4)], prompt_tokens=16, new_tokens=6, batch_sizes=(1, 2), samples=1,
                   isolate=False)
    assert [(r.batch, r.mode.startswith("llama.cpp")) for r in rows] == [(1, True), (1, True)]
    assert rows[0].size_mb == pytest.approx(f32.stat().st_size / 1e6)
    assert rows[1].size_mb == pytest.approx((q4 / "tiny-Q4_0.gguf").stat().st_size / 1e6)
    assert rows[1].size_mb < rows[0].size_mb
    for r in rows:
        assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and 0 < r.ttft_s < 30
    assert rows[1].ratios["size"] < 0.5


def test_llama_cpp_runner_generates_what_llama_cpp_generates(ggufs):
    """The runner's greedy loop (decode + argmax in place) continues a prompt exactly like
    llama-cpp-python's own greedy completion, so the timed work is real generation."""
    from llmq.backends.gguf.runtime import LlamaCppRunner

    _, f32, _ = ggufs
    r = LlamaCppRunner(str(f32), threads=1)
    r.load()
    prompt = r.tok("The capital of France is", add_special_tokens=False)["input_ids"]
    got, dec = [], r.dec
    dec.clear()
    dec.decode(prompt, 0)
    for i in range(5):
        got.append(dec.argmax())
        dec.decode([got[-1]], len(prompt) + i)
    dec.close()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(f32), n_ctx=256, verbose=False)
    ref = []
    for t in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        ref.append(t)
        if len(ref) == 5:
            break
    llm.close()
    assert got == ref


def test_bench_gguf_without_llama_cpp_python_names_the_fix(ggufs, monkeypatch):
    from llmq import benchmark as B
    from llmq.backends.gguf import plugin as P
    from llmq.errors import MissingDependencyError

    monkeypatch.setattr(P, "llama_cpp_installed", lambda: False)
    with pytest.raises(MissingDependencyError, match="llama-cpp-python"):
        B.bench([str(ggufs[1])], isolate=False, prompt_tokens=8, new_tokens=2, batch_sizes=(1,), samples=1)


def _child(code: str, *args) -> str:
    """stdout of ``python -c code args``, which must exit 0 (a SIGILL in llama.cpp fails the test,
    not pytest)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    return r.stdout


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_llama_cpp_uses_amx_where_the_cpu_has_it_and_a_quantized_prompt_runs(ggufs):
    """scripts/install-dev.sh builds llama.cpp for this CPU with llmq's AMX tile-config patch. On a CPU
    with AMX the build must use it (it doubles Q8_0 decode here) and a multi-token prompt on a
    quantized file — which runs ggml's AMX tile kernels, where the unpatched build dies with SIGILL —
    must finish (in a child process, so a crash fails this test instead of killing pytest) and agree
    with the same tokens decoded one at a time."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    if "amx_int8" in _cpu_flags():
        assert "AMX_INT8 = 1" in info, info
    _, _, q4 = ggufs
    code = (
        "import sys, numpy as np\n"
        "from llmq.backends.gguf.runtime import LlamaCppLM, _Decoder\n"
        "toks = list(range(5, 69))\n"
        "batched = LlamaCppLM(sys.argv[1], n_ctx=128, threads=2).row_logits(toks)\n"
        "d = _Decoder(__import__('pathlib').Path(sys.argv[1]), n_ctx=128, n_batch=64, threads=2)\n"
        "one = []\n"
        "for i, t in enumerate(toks):\n"
        "    d.decode([t], i)\n"
        "    one.append(np.ctypeslib.as_array(d.lib.llama_get_logits_ith(d.ctx, -1), shape=(d.vocab,)).copy())\n"
        "one = np.stack(one)\n"
        "assert np.isfinite(batched).all() and np.isfinite(one).all()\n"
        "print('relerr', float(np.linalg.norm(batched - one) / np.linalg.norm(one)))\n")
    rel = float(_child(code, next(q4.glob("*.gguf"))).split("relerr")[-1])
    # the batched prompt (AMX tile kernels where present) and one-token decodes (the vector kernels)
    # compute the same logits up to rounding: 0.021 on this file with the AMX build and with the
    # portable AVX-512 build alike (measured); a broken kernel is far off
    assert rel < 0.05, rel


def test_llama_cpp_amx_kernels_survive_torch_using_the_tiles_on_the_same_thread(ggufs):
    """PyTorch's oneDNN runs bf16 matmuls on AMX too and leaves the tile configuration changed; the
    unpatched ggml loaded its configuration once per thread, so the next quantized prompt died with
    SIGILL (seen in CI: a compare after other tests). Interleave both in one child process and check
    both still compute correct results."""
    _, _, q4 = ggufs
    code = (
        "import sys, numpy as np, torch\n"
        "from llmq.backends.gguf.runtime import LlamaCppLM\n"
        "lm = LlamaCppLM(sys.argv[1], n_ctx=128, threads=2)\n"
        "toks = list(range(5, 69))\n"
        "a, b = torch.randn(256, 256), torch.randn(256, 256)\n"
        "ref = a @ b\n"
        "first = lm.row_logits(toks)\n"
        "for _ in range(2):\n"
        "    got = (a.bfloat16() @ b.bfloat16()).float()\n"
        "    assert torch.allclose(got, ref, rtol=0.05, atol=0.5)\n"
        "    again = lm.row_logits(toks)\n"
        "    assert np.allclose(again, first, rtol=1e-4, atol=1e-4)\n"
        "print('ok')\n")
    assert _child(code, next(q4.glob("*.gguf"))).strip().endswith("ok")
