"""compressed-tensors exports (``format="compressed-tensors"``): the folder is what vLLM reads
(config validated by compressed-tensors' own pydantic model, Linears vLLM fuses in one group,
unquantized Linears in ``ignore``), it holds llmq's own codes and scales bit for bit, plain
transformers reloads it with llmq's logits, and the card, the push and the evaluator handle it.
Tiny random Llama: plumbing. The demo-model quality check is ``test_export_scores_what_torchao_scores``."""

from __future__ import annotations

import json
import re
import shlex

import pytest

import llmq
from llmq.errors import ConfigError

CT = "compressed-tensors"
X = [list(range(5, 45))]


def plain_logits(folder, ids=X):
    """Logits of ``folder`` loaded by plain transformers (its compressed-tensors support), not llmq."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return m(torch.tensor(ids)).logits


def torchao_model(qm):
    """The torchao model llmq quantized: ``qm.model``, or, where the plugin wrote it block by block
    (int8-dynamic streams), the torchao files it wrote loaded back (what the export converts)."""
    from llmq.backends.torchao import in_memory

    return in_memory(qm.model, qm.config.dtype)


def mem_logits(qm, ids=X):
    import torch

    with torch.no_grad():
        return torchao_model(qm)(torch.tensor(ids)).logits


def close(a, b, rel):
    """Max |a - b| within ``rel`` of max |a| (int8 W8A8: torchao rounds x * (1/s), compressed-tensors
    x / s, so a few activation codes at a rounding tie land one step apart)."""
    return float((a - b).abs().max()) <= rel * float(a.abs().max())


@pytest.fixture
def offline_hub(monkeypatch):
    """The Hub reads as unreachable (the card's license lookup), as in tests/test_publish.py."""
    import llmq.models as models
    from llmq.errors import ModelNotFoundError

    def unreachable(what, timeout=3.0):
        raise ModelNotFoundError(f"Cannot reach the Hugging Face Hub for {what!r}: offline or no network.")

    monkeypatch.setattr(models, "check_hub_reachable", unreachable)


@pytest.fixture(scope="module")
def dyn(tiny_model_dir, tmp_path_factory):
    qm = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu", format=CT)
    return qm, qm.save(tmp_path_factory.mktemp("ct") / "dyn")


@pytest.fixture(scope="module")
def static(tiny_model_dir, tmp_path_factory):
    qm = llmq.quantize(str(tiny_model_dir), "int8-static", device="cpu", format=CT, calibration="builtin",
                       n_samples=8, seqlen=64)
    return qm, qm.save(tmp_path_factory.mktemp("ct") / "static")


def test_int8_dynamic_folder_holds_torchao_codes_and_reloads_with_plain_transformers(dyn):
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    qm, out = dyn
    assert qm.config.format == CT and qm.config.quantize_embeddings is False  # the format's defaults
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(qc)
    assert qc["quant_method"] == CT and qc["format"] == "int-quantized" and qc["ignore"] == ["lm_head"]
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["weights"]["strategy"] == "channel"
    assert group["input_activations"] == {**group["input_activations"], "dynamic": True, "strategy": "token",
                                          "num_bits": 8, "type": "int", "symmetric": True}
    sd = load_file(str(out / "model.safetensors"))
    w = torchao_model(qm).model.layers[1].mlp.down_proj.weight  # torchao's Int8Tensor
    assert sd["model.layers.1.mlp.down_proj.weight"].equal(w.qdata)
    assert sd["model.layers.1.mlp.down_proj.weight_scale"].equal(w.scale.reshape(-1, 1))
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["quantization_config"] == qc and meta["config"]["format"] == CT
    assert meta["versions"]["compressed-tensors"] and meta["serving"]["tensor_parallel_sizes"] == [1, 2, 4]
    assert close(mem_logits(qm), plain_logits(out), 1e-2)


def test_int8_static_folds_smoothing_and_keeps_vllm_fused_groups_whole(static):
    import torch
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    qm, out = static
    assert qm.config.smooth_fold is True
    acts = json.loads((out / "llmq.json").read_text())["activations"]
    assert acts["smooth_fold"] and acts["smoothed_linears"] == 10  # q/k/v and gate/up of 2 layers, o_proj not
    qc = QuantizationConfig.model_validate(json.loads((out / "config.json").read_text())["quantization_config"])
    group_of = {t: name for name, g in qc.config_groups.items() for t in g.targets}
    for i in range(2):
        p = f"model.layers.{i}."
        assert len({group_of[p + f"self_attn.{x}_proj"] for x in "qkv"}) == 1  # vLLM's qkv_proj
        assert group_of[p + "mlp.gate_proj"] == group_of[p + "mlp.up_proj"]  # vLLM's gate_up_proj
    sd = load_file(str(out / "model.safetensors"))
    for n, m in qm.model.named_modules():
        w = getattr(m, "weight", None)
        if type(w).__name__ == "Int8Tensor":
            assert w.act_pre_scale is None  # folded: no run-time scale left
            assert sd[f"{n}.weight"].equal(w.qdata)
            if w.act_quant_scale is not None:
                assert torch.equal(sd[f"{n}.input_scale"].flatten(), w.act_quant_scale.flatten().float())
    # the smoothing lives in the norm weights, as saved
    norm = qm.model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, torch.ones_like(norm)) and sd["model.layers.0.input_layernorm.weight"].equal(norm)
    assert close(mem_logits(qm), plain_logits(out), 1e-2)


def test_save_writes_one_quantization_in_both_formats(tiny_model_dir, tmp_path):
    """``save(format=...)``: the torchao folder and the compressed-tensors folder of one quantization."""
    import torch

    qm = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu", quantize_embeddings=False)
    native = qm.save(tmp_path / "native")
    ct = qm.save(tmp_path / "ct", format=CT)
    assert qm.config.format is None  # the quantization's own config is unchanged
    metas = [json.loads((p / "llmq.json").read_text()) for p in (native, ct)]
    assert [m["config"]["format"] for m in metas] == [None, CT]
    assert [m["quantization_config"]["quant_method"] for m in metas] == ["torchao", CT]
    a, _ = llmq.load(native, device="cpu")
    b, _ = llmq.load(ct, device="cpu")
    with torch.no_grad():
        assert close(a(torch.tensor(X)).logits, b(torch.tensor(X)).logits, 1e-2)
    with pytest.raises(ConfigError, match="keeps the embeddings"):  # int8 embeddings cannot go there
        llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu").save(tmp_path / "x", format=CT)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("scheme,kw,match", [
    ("int8-dynamic", {"quantize_embeddings": True}, "keeps the embeddings"),
    ("int8-static", {"smooth_fold": False}, "smooth_fold=True"),
    ("gptq-int3", {}, "4- or 8-bit"),
    ("gptq-int4", {"desc_act": True, "act_group_aware": False}, "act-order"),
    ("qat-8da4w", {}, "qat-int4"),
    ("bnb-nf4", {}, "writes only its plugin's own format"),
    ("int8-dynamic", {"format": "gguf"}, "format='gguf' is invalid"),
])
def test_format_requests_a_plugin_cannot_write_fail_before_loading(tiny_model_dir, scheme, kw, match):
    kw = {"format": CT, **kw}
    with pytest.raises(ConfigError, match=re.escape(match)):
        llmq.core.prepare(str(tiny_model_dir), scheme, device="cpu", **kw)


def test_missing_compressed_tensors_is_one_line_before_any_weight(tiny_model_dir, monkeypatch):
    import importlib.util

    from llmq.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "compressed_tensors" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"llmq\[compressed-tensors\]"):
        llmq.core.prepare(str(tiny_model_dir), "int8-dynamic", device="cpu", format=CT)


def test_card_serves_with_vllm_and_reproduces_the_config(dyn, tmp_path, offline_hub):
    import shutil

    from llmq import publish
    from llmq.cli import build_parser
    from llmq.cli.run import overrides_from_args
    from llmq.schemes import get_scheme

    folder = shutil.copytree(dyn[1], tmp_path / "card")
    meta = json.loads((folder / "llmq.json").read_text())
    text = publish.render_card(folder, repo_id="me/tiny")
    assert "vllm serve me/tiny --tensor-parallel-size 4" in text and "N in {1, 2, 4}" in text
    assert "compressed-tensors, int-quantized" in text and "llmq[torchao,compressed-tensors]" in text
    cmd = re.search(r"## Reproduce\n\n```bash\n.*?\n(python -m llmq run.*?)\n```", text, re.S).group(1)
    args = build_parser().parse_args(shlex.split(cmd)[3:])
    assert args.format == CT
    assert get_scheme("int8-dynamic").config(**overrides_from_args(args)).to_dict() == meta["config"]
    res = publish.push(folder, "me/tiny-ct", dry_run=True)
    assert "model.safetensors" in dict(res.files) and "vllm serve me/tiny-ct --tensor-parallel-size" in \
        res.card.read_text()


def test_llmq_eval_and_compare_score_the_exported_folder(dyn, tiny_model_dir, data_dir):
    qm, out = dyn
    import math

    from llmq.eval import compare

    rep = llmq.evaluate(str(out), ppl="wikitext2", limit=2, seqlen=64, speed=False, progress=False).to_dict()
    assert math.isfinite(rep["model"]["perplexity"]["value"]) and rep["model"]["size_bytes"] > 0
    r = compare(str(tiny_model_dir), str(out), ppl="wikitext2", limit=2, seqlen=64, speed=False, progress=False)
    assert r["quantized"]["path"] == str(out) and r["quantized"]["kld"]["mean"] >= 0
    assert r["quantized"]["perplexity"]["value"] == pytest.approx(rep["model"]["perplexity"]["value"], rel=1e-6)


def test_serving_facts_keep_heads_and_groups_whole():
    from types import SimpleNamespace

    from llmq.backends.compressed import LayerQuant, serving_facts

    cfg = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, hidden_size=576)
    lq = LayerQuant({"group_size": None}, None, None)
    assert serving_facts(cfg, {"a": lq})["tensor_parallel_sizes"] == [1]  # SmolLM2: 9 heads
    cfg = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, hidden_size=4096)
    assert serving_facts(cfg, {"a": lq})["tensor_parallel_sizes"] == [1, 2, 4, 8]
    g = LayerQuant({"group_size": 128}, None, None)
    cfg.intermediate_size = 1536  # 1536 / 8 = 192: not a whole number of 128-groups
    assert serving_facts(cfg, {"a": g})["tensor_parallel_sizes"] == [1, 2, 4]


def test_bench_runs_the_exported_folder(dyn):
    from llmq.benchmark import bench_one

    rows = bench_one(str(dyn[1]), prompt_tokens=8, new_tokens=4, batch_sizes=(1,), samples=1)
    assert len(rows) == 1 and rows[0].decode_tok_s > 0
