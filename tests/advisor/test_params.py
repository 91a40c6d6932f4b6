"""Parameter counts without weights: safetensors headers, Hub metadata (plumbing), GGUF, config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmq.advisor import params
from llmq.errors import ConfigError, ModelNotFoundError

SMOL_PARAMS = 134_515_008  # transformers' count of SmolLM2-135M, tied embeddings once


def _transformers_count(path) -> int:
    from transformers import AutoModelForCausalLM

    from llmq.models import count_parameters

    return count_parameters(AutoModelForCausalLM.from_pretrained(path))


def test_local_folder_counts_from_headers_and_matches_transformers(tiny_model_dir):
    prof = params.profile(str(tiny_model_dir))
    assert prof.source == "headers"
    assert prof.parameters == _transformers_count(tiny_model_dir)
    assert prof.tied and prof.lm_head_params == 0
    # Layout adds up: every Linear + embeddings + norms.
    assert prof.linear_params + prof.embedding_params + prof.other_params == prof.parameters
    assert prof.layers == 2 and prof.kv_heads == 2 and prof.head_dim == 32


def test_untied_model_counts_lm_head(tmp_path):
    from llmq.testing import tiny_llama

    path = tiny_llama(tmp_path / "untied", tie_word_embeddings=False)
    prof = params.profile(str(path))
    assert not prof.tied
    assert prof.lm_head_params == prof.embedding_params == prof.vocab * prof.hidden
    assert prof.parameters == _transformers_count(path)


def test_safetensors_header_reader_rejects_garbage(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"abc")
    with pytest.raises(ModelNotFoundError):
        params.safetensors_header(bad)


@pytest.mark.slow
def test_smollm2_local_folder(smol_dir):
    prof = params.profile(str(smol_dir))
    assert (prof.parameters, prof.source, prof.tied) == (SMOL_PARAMS, "headers", True)
    assert prof.embedding_params == 49152 * 576


def test_config_only_counts_without_weights(smol_dir):
    from transformers import AutoConfig, LlamaConfig

    prof = params.config_profile(AutoConfig.from_pretrained(smol_dir), "smol")
    assert (prof.parameters, prof.source) == (SMOL_PARAMS, "config")
    # Llama-2-7B's published shape: transformers counts 6,738,415,616 parameters; built on the
    # meta device, so this costs no memory.
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
    big = params.config_profile(cfg, "llama-2-7b")
    assert big.parameters == 6_738_415_616
    assert big.lm_head_params == big.embedding_params == 32000 * 4096
    assert len(big.linears) == 32 * 7


def test_gguf_counts_from_tensor_table():
    from llmq.models import demo_gguf_path

    prof = params.profile(str(demo_gguf_path()))
    assert (prof.parameters, prof.source) == (SMOL_PARAMS, "gguf")
    assert prof.tied and prof.lm_head_params == 0
    assert (prof.layers, prof.hidden, prof.kv_heads, prof.head_dim, prof.vocab) == (30, 576, 3, 64, 49152)
    assert len(prof.linears) == 30 * 7


def test_hub_metadata_plumbing(monkeypatch, smol_dir):
    """The Hub is unreachable here: fake ``get_safetensors_metadata`` and the config fetch to check
    that a Hub id is counted from the metadata (and says so), never by downloading weights."""
    import huggingface_hub
    from transformers import AutoConfig

    from llmq.models import ModelSource

    calls = []

    def fake_meta(repo_id, revision=None, **kw):
        calls.append((repo_id, revision))
        return SimpleNamespace(parameter_count={"BF16": SMOL_PARAMS - 576, "F32": 576})

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake_meta)
    monkeypatch.setattr(ModelSource, "config", lambda self: AutoConfig.from_pretrained(smol_dir))
    monkeypatch.setattr(ModelSource, "local_dir", lambda self, progress=True: pytest.fail("downloaded weights"))
    prof = params.profile("HuggingFaceTB/SmolLM2-135M", revision="main")
    assert calls == [("HuggingFaceTB/SmolLM2-135M", "main")]
    assert (prof.parameters, prof.source, prof.checkpoint_dtype) == (SMOL_PARAMS, "hub", "bfloat16")
    assert "Hub safetensors metadata" in prof.source_text


def test_hub_metadata_failure_falls_back_to_config(monkeypatch, smol_dir):
    import huggingface_hub
    from transformers import AutoConfig

    from llmq.models import ModelSource

    def boom(*a, **k):
        raise OSError("no safetensors metadata")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", boom)
    monkeypatch.setattr(ModelSource, "config", lambda self: AutoConfig.from_pretrained(smol_dir))
    prof = params.profile("HuggingFaceTB/SmolLM2-135M")
    assert (prof.parameters, prof.source) == (SMOL_PARAMS, "config")
    assert any("metadata unavailable" in n for n in prof.notes)


@pytest.mark.parametrize("n", [50_000_000, 135_000_000, 7_000_000_000, 70_000_000_000])
def test_synthetic_profile_adds_up(n):
    prof = params.profile(n)
    assert prof.source == "given" and prof.parameters == n
    assert prof.linear_params + prof.embedding_params + prof.lm_head_params + prof.other_params == n
    assert prof.other_params < 0.01 * n  # the stand-in is almost all Linear + embeddings


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError):
        params.profile(0)
    with pytest.raises(ModelNotFoundError):
        params.profile(str(tmp_path / "missing.gguf"))
