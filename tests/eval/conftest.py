"""Evaluator fixtures: the real SmolLM2 loaded once per session, a tiny model and its bnb-fp4 copy."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smol(smol_dir):
    """(model, tokenizer): SmolLM2-135M-Instruct in fp32, loaded once for every evaluator test."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_fp4_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model quantized with bnb-fp4 (seconds): a lossy copy for compare and gate tests."""
    import llmq

    return llmq.quantize(str(tiny_model_dir), "bnb-fp4", device="cpu").save(tmp_path_factory.mktemp("q") / "fp4")
