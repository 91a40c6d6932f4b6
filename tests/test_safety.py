import json
import os
import struct

import pytest

from llmq import safety
from llmq.eval.api import check_eval_request
from llmq.hub import check_repo_id
from llmq.errors import ConfigError, CorruptModelError, DataError, RemoteCodeError


def _write_st(path, tensors, metadata=None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


# -- foreign code ---------------------------------------------------------------------------------------
def test_remote_code_detected_by_auto_map_or_python_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert safety.remote_code_reason(tmp_path) is None
    safety.refuse_remote_code(tmp_path, trust_remote_code=False)
    (tmp_path / "modeling_x.py").write_text("raise SystemExit")
    assert "modeling_x.py" in safety.remote_code_reason(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}))
    with pytest.raises(RemoteCodeError, match="config.json has auto_map.*--trust-remote-code"):
        safety.refuse_remote_code(tmp_path, trust_remote_code=False)
    safety.refuse_remote_code(tmp_path, trust_remote_code=True)  # opted in: allowed


# -- non-finite -------------------------------------------------------------------------------------------
def test_nonfinite_named_and_integers_ignored():
    import torch

    sd = {"ok": torch.ones(3), "ints": torch.tensor([1, 2], dtype=torch.int8),
          "bad.weight": torch.tensor([1.0, float("nan")]), "inf.scales": torch.tensor([float("inf")]).half()}
    assert safety.nonfinite_tensors(sd.items()) == ["bad.weight", "inf.scales"]
    with pytest.raises(CorruptModelError, match="bad.weight, inf.scales"):
        safety.check_finite(sd, "m")
    safety.check_finite({"ok": torch.ones(3)}, "m")


def test_finite_safetensors_folder_and_model(tmp_path):
    import torch

    _write_st(tmp_path / "model.safetensors", {"w": torch.ones(2, 2), "s": torch.tensor([65504.0]).half() * 2})
    with pytest.raises(CorruptModelError, match="in s"):
        safety.check_finite_safetensors(tmp_path, "out")
    lin = torch.nn.Linear(2, 2)
    safety.check_finite_model(lin, "lin")
    with torch.no_grad():
        lin.bias[0] = float("-inf")
    with pytest.raises(CorruptModelError, match="bias"):
        safety.check_finite_model(lin, "lin")


def test_finite_logits_check():
    import torch

    safety.check_finite_logits(torch.zeros(1, 2, 3), "m")
    with pytest.raises(CorruptModelError, match="not scored"):
        safety.check_finite_logits(torch.tensor([[[0.0, float("nan")]]]), "m")


# -- text, names, values ----------------------------------------------------------------------------------
def test_calibration_text_check(tmp_path):
    safety.check_text("Der schnelle braune Fuchs. 東京は日本の首都です。\n" * 50, "t")
    (tmp_path / "r.txt").write_bytes(os.urandom(5000))
    with pytest.raises(DataError, match="does not look like text"):
        safety.check_text_file(tmp_path / "r.txt")
    with pytest.raises(DataError, match="no text"):
        safety.check_text("   \n", "t")


def test_tokenizer_larger_than_the_embeddings_is_refused():
    """Ids past the embedding table were an IndexError deep in a forward pass (eval, calibration)."""
    from types import SimpleNamespace

    import torch

    class Tok:
        def __init__(self, n):
            self.n = n

        def get_vocab(self):
            return {f"t{i}": i for i in range(self.n)}

    small = torch.nn.Module()
    small.get_input_embeddings = lambda: torch.nn.Embedding(300, 8)
    with pytest.raises(CorruptModelError, match="tokenizer has 512 token ids but the embedding table holds 300"):
        safety.check_vocab(Tok(512), small, "m")
    safety.check_vocab(Tok(300), small, "m")
    safety.check_vocab(Tok(512), SimpleNamespace(vocab_size=576), "m")  # a config: padded tables are fine
    with pytest.raises(CorruptModelError, match="holds 256"):
        safety.check_vocab(Tok(512), SimpleNamespace(vocab_size=256), "m")


def test_skip_modules_must_match_and_errors_list_near_names():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]
    safety.check_skip_modules(["q_proj", "model.layers.0.mlp.*", "lm_head"], names)
    with pytest.raises(ConfigError, match="'down_prj' matches no module.*down_proj"):
        safety.check_skip_modules(["down_prj"], names)


def test_field_types():
    from llmq.backends.bnb import BnbInt8Config
    from llmq.backends.gptqmodel import GPTQConfig

    safety.check_field_types(GPTQConfig, {"damp_percent": 0.1, "bits": 4, "sym": True, "skip_modules": ["a"]})
    safety.check_field_types(GPTQConfig, {"damp_percent": 1})  # an int is a valid float
    with pytest.raises(ConfigError, match="damp_percent='abc' is invalid: expected float"):
        safety.check_field_types(GPTQConfig, {"damp_percent": "abc"})
    with pytest.raises(ConfigError, match="bits=True"):
        safety.check_field_types(GPTQConfig, {"bits": True})
    with pytest.raises(ConfigError, match="threshold='high'"):
        safety.check_field_types(BnbInt8Config, {"threshold": "high"})


def test_device_and_eval_options():
    for ok in (None, "cpu", "cuda", "cuda:1", "mps"):
        safety.check_device(ok)
    for bad in ("tpu", "cuda:x", ""):
        with pytest.raises(ConfigError):
            safety.check_device(bad)
    safety.check_eval_options(seqlen=128, stride=64, batch_size=1, limit=None)
    for kw in ({"seqlen": 0}, {"stride": 0}, {"batch_size": 0}, {"limit": -1}, {"seqlen": 32, "stride": 64}):
        with pytest.raises(ConfigError):
            safety.check_eval_options(**kw)


def test_report_dir(tmp_path):
    safety.check_report_dir(tmp_path / "new" / "dir")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        safety.check_report_dir(tmp_path / "f")


def test_repo_id_and_eval_request(tmp_path):
    from llmq.errors import LlmqError

    check_repo_id(None)
    check_repo_id("me/tiny-llama-int8")
    for bad in ("not a repo", "a/b/c", "/x"):
        with pytest.raises(ConfigError, match="not a Hub repo id"):
            check_repo_id(bad)
    check_eval_request(tasks="arc_easy,lm_eval:piqa", ppl="wikitext2", max_ppl_increase="5%")
    for kw in ({"tasks": "no_such_task"}, {"tasks": str(tmp_path / "x.jsonl")}, {"max_ppl_increase": "lots"},
               {"max_kld": -1.0}, {"ppl": str(tmp_path / "missing.txt")}):
        with pytest.raises(LlmqError):
            check_eval_request(**kw)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_finite_safetensors_bit_check_per_dtype(tmp_path, dtype):
    """The memory-mapped exponent-bit check finds NaN, +Inf and -Inf in every float dtype and passes
    large finite values (fp16's 6e4, 1e30 elsewhere); integer tensors are skipped."""
    import torch
    from safetensors.torch import save_file

    dt = getattr(torch, dtype)
    big = 6e4 if dtype == "float16" else 1e30
    for val, bad in ((float("nan"), True), (float("inf"), True), (float("-inf"), True), (big, False)):
        t = torch.randn(1000, 7).to(dt)
        t[500, 3] = val
        save_file({"i": torch.full((3,), -1, dtype=torch.int32), "w": t}, str(tmp_path / "m.safetensors"))
        if bad:
            with pytest.raises(CorruptModelError, match="in w"):
                safety.check_finite_safetensors(tmp_path, "m")
        else:
            safety.check_finite_safetensors(tmp_path, "m")


def test_finite_safetensors_check_reads_fp8(tmp_path):
    """FP8 tensors (the fp8 scheme's weights): torch has no isfinite for them; a NaN code is found,
    448 (E4M3's largest) is not an error."""
    import torch
    from safetensors.torch import save_file

    t = torch.randn(64, 8).to(torch.float8_e4m3fn)
    t[3, 3] = 448.0
    save_file({"w": t}, str(tmp_path / "m.safetensors"))
    safety.check_finite_safetensors(tmp_path, "m")
    t[5, 1] = float("nan")
    save_file({"w": t}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CorruptModelError, match="in w"):
        safety.check_finite_safetensors(tmp_path, "m")


def test_file_source_guard_checks_the_folder_beside_it(tmp_path):
    from llmq import safety
    from llmq.errors import RemoteCodeError

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert safety.code_folder(f) == tmp_path and safety.remote_code_reason(f) is None
    (tmp_path / "config.json").write_text('{"auto_map": {"AutoConfig": "configuration_x.X"}}')
    with pytest.raises(RemoteCodeError, match="config.json has auto_map"):
        safety.refuse_remote_code(f, False)
    safety.refuse_remote_code(f, True)
