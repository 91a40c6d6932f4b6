"""The plugin recipe, proved: a toy scheme written as one plugin class (what ``llmq/backends/toy.py``
would hold) and registered with one call shows up in ``llmq schemes``, the size estimate, the
advisor and the model card, and round-trips through quantize -> save -> load on the tiny model.

The toy writes a non-transformers artefact (``model.toy``: the fp16 weights in one file, no
config.json quant_method), like the GGUF plugin will, so the save / completeness / recognise / load
hooks are exercised on the path that is not ``from_pretrained``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import llmq
from llmq.backends.base import Backend, CardFacts, Scheme
from llmq.config import SchemeConfig, check_choice

TOY_FILE = "model.toy"


# -- the one file a contributor writes ------------------------------------------------------------
@dataclass(kw_only=True)
class ToyConfig(SchemeConfig):
    dtype: str = "float16"

    def validate(self) -> None:
        check_choice("dtype", self.dtype, ("float16",))


class ToyBackend(Backend):
    name = "toy"
    runtime = "toy-runtime"
    weight_patterns = ("*.toy",)
    schemes = (Scheme("toy-fp16", "toy", ToyConfig, {}, 16, "fp16 weights in one .toy file", "16",
                      "toy: proves the plugin recipe", tree_rank={"cpu": 0.5}),)

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map=device)

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        from safetensors.torch import save_model

        save_model(model, str(out / TOY_FILE))
        model.config.save_pretrained(out / "toy-config")
        tokenizer.save_pretrained(out / "toy-config")

    @classmethod
    def missing_files(cls, folder: Path) -> list[str]:
        return [] if (folder / TOY_FILE).is_file() else [TOY_FILE]

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return (path / TOY_FILE).is_file()

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None) -> tuple[Any, Any]:
        import torch
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / "toy-config"),
                                                 dtype=torch.float16)
        load_model(model, str(path / TOY_FILE))
        return model.to(device).eval(), AutoTokenizer.from_pretrained(path / "toy-config")

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        from llmq.backends.cast import cast_size

        return cast_size(profile, scheme.name, config.dtype)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        return CardFacts(packages="toy-runtime", python=f'toy.load("{repo}")', tags=["toy-format"],
                         hardware="Toy runtime: runs wherever the toy does.")


# -- the one registry line ------------------------------------------------------------------------
@pytest.fixture
def toy():
    from llmq.schemes import register_plugin, unregister_plugin

    register_plugin(ToyBackend)
    try:
        yield ToyBackend
    finally:
        unregister_plugin("toy")


def test_toy_scheme_appears_everywhere(toy, tiny_model_dir, tmp_path, capsys):
    from llmq.advisor import rules
    from llmq.advisor.estimate import all_estimates, estimate_scheme
    from llmq.cli import main
    from llmq.schemes import SCHEMES, get_scheme

    assert "toy-fp16" in SCHEMES and get_scheme("toy-fp16").backend_cls() is ToyBackend
    assert main(["schemes", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy-fp16"]["runtime"] == "toy-runtime" and rows["toy-fp16"]["backend"] == "toy"

    prof = llmq.advisor.profile(str(tiny_model_dir))
    est = estimate_scheme(prof, "toy-fp16")
    assert est.bytes == estimate_scheme(prof, "fp16").bytes  # same layout as fp16
    assert "toy-fp16" in [e.scheme for e in all_estimates(prof)]

    assert rules.ROLES["toy-fp16"].role == "toy: proves the plugin recipe"
    assert rules.TREE["cpu"][:2] == ["int8-dynamic", "toy-fp16"]  # tree_rank 0.5: between rank 0 and 1
    adv = llmq.advise(str(tiny_model_dir), device="cpu", ram_gb=16)
    cand = {c.scheme: c for c in adv.candidates}["toy-fp16"]
    assert cand.role == "toy: proves the plugin recipe" and cand.size.bytes == est.bytes

    # quantize -> save (the plugin's own artefact) -> load through the plugin's recognise hook
    qm = llmq.quantize(tiny_model_dir, "toy-fp16", device="cpu")
    out = qm.save(tmp_path / "toy")
    assert (out / TOY_FILE).is_file() and not list(out.glob("*.safetensors")) and (out / "llmq.json").is_file()
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["scheme"] == "toy-fp16" and meta["backend"] == "toy"
    assert meta["size_bytes"]["after"] == (out / TOY_FILE).stat().st_size  # the plugin says which files are weights
    model, tok = llmq.load(out, device="cpu")
    import torch

    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, qm.model(ids).logits)
    assert llmq.schemes.plugin_of_folder(out) is ToyBackend
    assert qm.generate("The capital of France is", max_new_tokens=4) == ToyBackend.generate(
        model, tok, "The capital of France is", max_new_tokens=4)

    # the card's facts come from the plugin
    from llmq.publish import render_card

    card = render_card(out, lookup_license=False)
    assert "toy-format" in card and "pip install toy-runtime" in card and 'toy.load("' in card
    assert "Toy runtime: runs wherever the toy does." in card


def test_an_incomplete_output_is_refused(toy, tiny_model_dir, tmp_path, monkeypatch):
    """``missing_files`` decides what a complete output is: a plugin that wrote nothing fails the save."""
    from llmq.errors import LlmqError

    qm = llmq.quantize(tiny_model_dir, "toy-fp16", device="cpu")
    monkeypatch.setattr(qm.backend, "save", lambda model, tokenizer, out: None)
    with pytest.raises(LlmqError, match="The toy backend wrote no model.toy"):
        qm.save(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_unregister_removes_the_scheme(toy):
    from llmq.schemes import SCHEMES, unregister_plugin

    unregister_plugin("toy")
    assert "toy-fp16" not in SCHEMES
    from llmq.schemes import register_plugin

    register_plugin(ToyBackend)  # the fixture unregisters it again
    assert "toy-fp16" in SCHEMES


def test_load_refuses_folders_without_safetensors_or_tokenizer(tiny_model_dir, tmp_path):
    """A pytorch_model.bin folder was unpickled by torch (or failed with torch's traceback); a folder
    without tokenizer files ended in transformers' multi-line message."""
    import shutil

    from llmq.errors import ModelNotFoundError

    binonly = tmp_path / "bin"
    binonly.mkdir()
    shutil.copy(tiny_model_dir / "config.json", binonly)
    (binonly / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ModelNotFoundError, match="holds pytorch_model.bin, and llmq loads safetensors only"):
        llmq.load(binonly, device="cpu")
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, notok)
    with pytest.raises(ModelNotFoundError, match="has no usable tokenizer") as e:
        Backend.load_tokenizer(notok)
    assert "\n" not in str(e.value)
# -- layer types: a scheme refuses a model whose weights sit in layers it does not convert --------
def _gpt2_config():
    from transformers import GPT2Config

    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=128, bos_token_id=0, eos_token_id=0)
    cfg.architectures = ["GPT2LMHeadModel"]
    return cfg


def test_weight_layers_are_read_from_the_config_alone(tiny_model_dir):
    """Llama keeps its matrices in nn.Linear, GPT-2 in transformers' Conv1D (weight stored
    transposed: c_attn maps 64 inputs to 3 x 64 outputs); embeddings and the head are not listed."""
    from transformers import AutoConfig

    from llmq.backends.base import block_shapes, weight_layer_types

    llama = weight_layer_types(AutoConfig.from_pretrained(tiny_model_dir))
    assert set(llama) == {"Linear"} and len(llama["Linear"]) == 14 and "lm_head" not in llama["Linear"]
    gpt2 = _gpt2_config()
    assert set(weight_layer_types(gpt2)) == {"Conv1D"}
    shapes = block_shapes(gpt2)
    assert shapes["transformer.h.0.attn.c_attn"] == (64, 192) and shapes["transformer.h.1.mlp.c_proj"] == (256, 64)
    assert len(shapes) == 8 and block_shapes(gpt2, ("c_fc",)).keys() == shapes.keys() - {
        "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"}


def test_a_linear_only_plugin_refuses_conv1d_in_one_line_and_a_cast_does_not():
    from llmq.backends.cast import CastBackend

    scheme = ToyBackend.schemes[0]
    why = ToyBackend(scheme, scheme.config()).unsupported(_gpt2_config())
    assert why.startswith("toy-fp16 cannot quantize GPT2LMHeadModel's Conv1D layers (transformer.h.0.attn.c_attn, ...)")
    assert "Linear layers only" in why and "\n" not in why
    fp16 = CastBackend.schemes[0]
    assert CastBackend(fp16, fp16.config()).unsupported(_gpt2_config()) is None  # layer_types None: every weight
