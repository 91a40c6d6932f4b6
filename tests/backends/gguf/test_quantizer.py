"""``llama_model_quantize`` as llmq calls it: requantizing an already quantized file needs llama.cpp's
``allow_requantize`` (what ``llmq.backends.gguf.requantize`` sets for quantized sources), and the
file type the header names is read as ``llama-quantize`` spells it."""

from __future__ import annotations

import pytest

from llmq.backends.gguf import quantizer as G
from llmq.errors import LlmqError


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    from llmq.testing_gguf import tiny_sentencepiece_model

    d = tmp_path_factory.mktemp("q")
    f32 = d / "tiny.F32.gguf"
    G.convert(tiny_sentencepiece_model(d / "hf"), f32, "f32")
    q8 = d / "tiny.Q8_0.gguf"
    G.quantize_file(f32, q8, "Q8_0")
    return f32, q8


def test_requantizing_a_quantized_file_needs_allow_requantize(q8, tmp_path):
    from llmq.backends.gguf.requantize import file_type_name

    f32, q8 = q8
    assert file_type_name(f32) == "F32" and file_type_name(q8) == "Q8_0"
    with pytest.raises(LlmqError, match="llama_model_quantize failed"):
        G.quantize_file(q8, tmp_path / "refused.gguf", "Q4_0")  # llama.cpp refuses quantized input by default
    G.quantize_file(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True)
    assert file_type_name(tmp_path / "q4.gguf") == "Q4_0"
    assert G.tensor_types(tmp_path / "q4.gguf")["blk.0.attn_q.weight"] == "Q4_0"
