"""GGUF backend plumbing on tiny random models: llama.cpp's converter + llama_model_quantize write every
scheme, the files load in llama-cpp-python and in transformers (``gguf_file=``) with logits close to
the fp32 source, the importance matrix has llama-imatrix's shape and changes the bits, and bad input
fails with one line. Quality claims (perplexity vs llama.cpp's tools) are in scripts/bench_gguf.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmq.backends.gguf import plugin as P
from llmq.backends.gguf import quantizer as G
from llmq.errors import ConfigError, MissingDependencyError

#: relative logit error (||q - fp32|| / ||fp32||) each type must stay under on the tiny random model
#: (measured: Q8_0 0.029/0.024 on llama.cpp/transformers, Q6_K 0.088, Q5_K_M 0.135, Q4_K_M 0.26, Q4_0 0.32;
#: independent logits of equal norm would be at sqrt(2) = 1.41), so ~1.5x the measured error
TOL = {"gguf-q8_0": 0.045, "gguf-q6_k": 0.13, "gguf-q5_k_m": 0.2, "gguf-q4_k_m": 0.4, "gguf-q4_0": 0.45}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from llmq.testing_gguf import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="module")
def ref_logits(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 49000, (1, 48), generator=torch.Generator().manual_seed(0))
    m = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        return ids, m(ids).logits[0].numpy()


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("scheme", list(G.SCHEMES))
def test_every_scheme_loads_in_llama_cpp_and_transformers(scheme, tiny, ref_logits, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llmq.backends.gguf.runtime import LlamaCppLM

    ids, ref = ref_logits
    res = G.quantize_model(tiny, tmp_path / "out", G.config_for(scheme), name="tiny")
    assert res.path == tmp_path / "out" / "tiny.gguf" and res.path.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "llmq.json", "tiny.gguf"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    rec = json.loads((tmp_path / "out" / "llmq.json").read_text())
    assert rec["scheme"] == scheme and rec["ftype"] == G.SCHEMES[scheme] and rec["imatrix"] is False
    assert "FROM ./tiny.gguf" in (tmp_path / "out" / "Modelfile").read_text()
    types = G.tensor_types(res.path)
    base = {"gguf-q8_0": "Q8_0", "gguf-q6_k": "Q6_K", "gguf-q5_k_m": "Q5_K", "gguf-q4_k_m": "Q4_K",
            "gguf-q4_0": "Q4_0"}[scheme]
    assert types["blk.0.attn_q.weight"] == base
    assert types["blk.0.attn_norm.weight"] == "F32"
    # tied embedding doubles as output: llama.cpp's output rule (Q6_K unless the base is Q8_0)
    assert types["token_embd.weight"] == ("Q8_0" if base == "Q8_0" else "Q6_K")

    lm = LlamaCppLM(res.path, n_ctx=64)
    try:
        got = lm(ids).logits[0].numpy()
    finally:
        lm.close()
    assert got.shape == ref.shape
    assert _rel(got, ref) < TOL[scheme]

    m = AutoModelForCausalLM.from_pretrained(res.path.parent, gguf_file=res.path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        hf = m(ids).logits[0].numpy()
    assert _rel(hf, ref) < TOL[scheme]


def test_q4_k_m_mixes_types_like_llama_quantize(tiny, tmp_path):
    res = G.quantize_model(tiny, tmp_path / "o", G.config_for("gguf-q4_k_m"))
    types = G.tensor_types(res.path)
    # llama.cpp's use_more_bits(i, n): with n = 2 layers only layer 1 (i >= 7n/8) gets Q6_K attn_v/ffn_down
    assert types["blk.1.attn_v.weight"] == "Q6_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_v.weight"] == "Q4_K" and types["blk.0.ffn_down.weight"] == "Q4_K"
    assert types["blk.0.attn_k.weight"] == "Q4_K"


def test_output_type_override(tiny, tmp_path):
    cfg = G.config_for("gguf-q4_k_m", token_embedding_type="q8_0", output_tensor_type="q8_0")
    res = G.quantize_model(tiny, tmp_path / "o", cfg)
    assert G.tensor_types(res.path)["token_embd.weight"] == "Q8_0"


def test_imatrix_semantics_and_effect(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["The quick brown fox jumps over the lazy dog. " * 40] * 4
    im, fp = G.compute_imatrix(tiny, texts, n_samples=2, seqlen=64, seed=0)
    assert set(im) >= {"blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_up.weight"}
    assert all(k.startswith("blk.") for k in im)  # llama-imatrix skips output.weight by default
    assert im["blk.0.ffn_down.weight"].shape == (512,) and im["blk.0.attn_q.weight"].shape == (256,)
    # llama-imatrix's statistic: mean over tokens of x^2 per input column, here recomputed by hand
    tok = AutoTokenizer.from_pretrained(tiny)
    from llmq import calibration as cal

    calib = cal.build(texts, tok, n_samples=2, seqlen=64, seed=0)
    m = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    seen = []
    h = m.model.layers[1].mlp.up_proj.register_forward_hook(lambda mod, a, o: seen.append(a[0][0]))
    with torch.no_grad():
        for s in calib.samples:
            m(torch.tensor([s]))
    h.remove()
    x = torch.cat(seen)
    np.testing.assert_allclose(im["blk.1.ffn_up.weight"], (x * x).mean(0).numpy(), rtol=1e-4)
    assert fp["n_samples"] == 2 and fp["seqlen"] == 64

    plain = G.quantize_model(tiny, tmp_path / "a", G.config_for("gguf-q4_k_m"))
    with_im = G.quantize_model(tiny, tmp_path / "b", G.config_for("gguf-q4_k_m"), imatrix=im)
    assert with_im.record["imatrix"] is True
    assert plain.path.read_bytes() != with_im.path.read_bytes()


def test_calibration_recorded(tiny, tmp_path):
    texts = ["Calibration text for the importance matrix, repeated. " * 30] * 3
    res = G.quantize_model(tiny, tmp_path / "o", G.config_for("gguf-q4_k_m", calibration=texts, n_samples=2,
                                                                seqlen=32))
    rec = json.loads((tmp_path / "o" / "llmq.json").read_text())
    assert rec["imatrix"] is True and rec["calibration"]["n_samples"] == 2
    assert rec["calibration"]["tensors"] == 14 and len(rec["calibration"]["sha256"]) == 64
    assert rec["config"]["calibration"] == "<3 strings>"
    assert res.record["timings"]["imatrix_s"] > 0


def test_gemma3_converts_and_matches(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llmq.backends.gguf.runtime import LlamaCppLM
    from llmq.testing_gguf import tiny_model

    src = tiny_model(tmp_path / "g3", "gemma3")
    res = G.quantize_model(src, tmp_path / "o", G.config_for("gguf-q8_0"))
    assert res.record["gguf_arch"] == "gemma3"
    ids = torch.randint(0, 49000, (1, 40), generator=torch.Generator().manual_seed(1))
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = m(ids).logits[0].numpy()
    lm = LlamaCppLM(res.path, n_ctx=64)
    try:
        got = lm(ids).logits[0].numpy()
    finally:
        lm.close()
    assert _rel(got, ref) < TOL["gguf-q8_0"]


def _unknown_architecture(tiny, tmp_path):
    """A copy of the tiny model whose config names an architecture llama.cpp's converter lacks."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def test_unsupported_architecture_one_line(tiny, tmp_path):
    bad = _unknown_architecture(tiny, tmp_path)
    with pytest.raises(ConfigError) as e:
        G.quantize_model(bad, tmp_path / "o", G.config_for("gguf-q8_0"))
    msg = str(e.value)
    assert "\n" not in msg and "FrobnicatorForCausalLM" in msg and "LLAMA_CPP_ROOT" in msg
    assert not (tmp_path / "o").exists()


def test_missing_llama_cpp_python_one_line(tiny, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(MissingDependencyError) as e:
        G.quantize_model(tiny, tmp_path / "o", G.config_for("gguf-q4_k_m"))
    msg = str(e.value)
    assert "\n" not in msg and "llama-cpp-python" in msg and "pip install 'llmq[gguf]'" in msg
    assert not (tmp_path / "o").exists()


def test_config_validation():
    with pytest.raises(ConfigError):
        G.GGUFConfig(ftype="Q3_K_XL")
    with pytest.raises(ConfigError):
        G.config_for("gguf-q4_k_m", output_tensor_type="q7_k")
    from llmq.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        G.config_for("gguf-q4_k_s")


def test_llama_cpp_perplexity_matches_transformers(tiny, tmp_path):
    """The same protocol string and (fp32 vs F32 GGUF) the same perplexity within 0.5%."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq.eval.perplexity import gguf_perplexity, perplexity

    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"Sentence number {i} talks about apples, rivers and {i * 7} stones." for i in range(300)))
    f32 = tmp_path / "f32.gguf"
    G.convert(tiny, f32, "f32")
    tok = AutoTokenizer.from_pretrained(tiny)
    m = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    a = perplexity(m, tok, str(text), seqlen=128, limit=4, progress=False)
    b = gguf_perplexity(f32, tok, str(text), seqlen=128, limit=4)
    assert a.protocol == b.protocol
    assert abs(b.value / a.value - 1) < 0.005


def test_size_estimate_close_to_file(tiny, tmp_path):
    from llmq.advisor.params import profile

    prof = profile(str(tiny))
    for scheme in ("gguf-q8_0", "gguf-q4_k_m"):
        est = P.estimate_size(prof, scheme)
        real = G.quantize_model(tiny, tmp_path / scheme, G.config_for(scheme)).path.stat().st_size
        # tiny model: weights ~1/3 of the file, the 49k-token vocabulary metadata the rest
        assert abs(est.bytes / real - 1) < 0.25, (scheme, est.bytes, real)


# ---------------------------------------------------------------------------------------------
# the plugin in llmq's pipeline: quantize/save, run --calibration, load, card, push, advisor
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q8_out(tiny, tmp_path_factory):
    import llmq

    qm = llmq.quantize(str(tiny), "gguf-q8_0")
    out = qm.save(tmp_path_factory.mktemp("plugin") / "q8")
    return qm, out


def test_quantize_save_writes_one_gguf_modelfile_and_meta(q8_out):
    qm, out = q8_out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", "llama-Q8_0.gguf", "llmq.json"]
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["scheme"] == "gguf-q8_0" and meta["backend"] == "gguf" and meta["calibration"] is None
    qc = meta["quantization_config"]
    assert qc["file"] == "llama-Q8_0.gguf" and qc["imatrix"] is False and qc["tensor_types"]["Q8_0"] == 15
    assert meta["size_bytes"]["after"] == (out / "llama-Q8_0.gguf").stat().st_size
    assert meta["versions"]["llama-cpp-python"] and meta["versions"]["auto-round"]
    assert "FROM ./llama-Q8_0.gguf" in (out / "Modelfile").read_text()
    assert isinstance(qm.generate("The capital of France is", 4), str)


def test_load_runs_the_output_on_llama_cpp_and_falls_back_to_transformers(q8_out, ref_logits, monkeypatch):
    import torch

    import llmq
    from llmq.backends.gguf.runtime import LlamaCppLM
    from llmq.schemes import plugin_of_folder

    _, out = q8_out
    assert plugin_of_folder(out) is P.GGUFBackend and plugin_of_folder(out / "llama-Q8_0.gguf") is P.GGUFBackend
    ids, ref = ref_logits
    m, tok = llmq.load(out)
    assert isinstance(m, LlamaCppLM) and m.llmq_runtime == "llama.cpp" and tok.get_vocab()
    try:
        assert _rel(m(ids).logits[0].numpy(), ref) < TOL["gguf-q8_0"]
    finally:
        m.close()
    # the rule: without llama-cpp-python, transformers dequantizes the file, and says so
    monkeypatch.setattr(P, "llama_cpp_installed", lambda: False)
    m, _ = llmq.load(out / "llama-Q8_0.gguf")
    assert m.llmq_runtime == "transformers (dequantized GGUF)"
    with torch.no_grad():
        assert _rel(m(ids).logits[0].numpy(), ref) < TOL["gguf-q8_0"]


def test_run_with_calibration_records_it(tiny, tmp_path, capsys):
    from llmq.cli import main

    txt = tmp_path / "calib.txt"
    txt.write_text("Calibration text for the importance matrix, repeated often. " * 80)
    out = tmp_path / "run"
    rc = main(["run", "--model", str(tiny), "--scheme", "gguf-q4_k_m", "--calibration", str(txt),
               "--n-samples", "2", "--seqlen", "32", "-o", str(out)])
    assert rc == 0
    err = capsys.readouterr().err  # computing the importance matrix shows its progress (it was silent for minutes)
    assert "imatrix" in err and "2/2" in err
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["config"]["calibration"] == str(txt) and meta["config"]["n_samples"] == 2
    assert meta["calibration"]["n_samples"] == 2 and len(meta["calibration"]["sha256"]) == 64
    qc = meta["quantization_config"]
    assert qc["imatrix"] is True and qc["calibration"]["tensors"] == 14
    from llmq.modelcard import reproduce_command

    cmd, _ = reproduce_command(meta)
    assert "--calibration" in cmd and "--n-samples 2" in cmd and "--seqlen 32" in cmd


def test_card_and_push_dry_run(q8_out, monkeypatch):
    import llmq.models as models
    from llmq import publish
    from llmq.errors import ModelNotFoundError

    def unreachable(what, timeout=3.0):
        raise ModelNotFoundError(f"Cannot reach the Hugging Face Hub for {what!r}: offline.")

    monkeypatch.setattr(models, "check_hub_reachable", unreachable)

    _, out = q8_out
    res = publish.push(out, "me/tiny-gguf", dry_run=True)
    names = {n for n, _ in res.files}
    assert {"llama-Q8_0.gguf", "Modelfile", "llmq.json", "README.md"} <= names
    card = (out / "README.md").read_text()
    assert "library_name: gguf" in card and "### llama.cpp / llama-cpp-python" in card
    assert 'Llama.from_pretrained("me/tiny-gguf", filename="llama-Q8_0.gguf"' in card
    assert "ollama create my-model -f Modelfile" in card and "llama-cli -hf me/tiny-gguf" in card
    assert "### vLLM" not in card and "- gguf" in card and "- q8_0" in card


def test_advisor_and_auto_candidates_include_gguf_on_cpu(tiny):
    from llmq.advisor.advice import advise
    from llmq.pipeline.auto import pick_candidates

    adv = advise(str(tiny), device="cpu", ram_gb=16)
    by = {c.scheme: c for c in adv.candidates}
    assert set(G.SCHEMES) <= set(by) and all(by[s].installed for s in G.SCHEMES)
    assert by["gguf-q8_0"].size.bytes < by["bf16"].size.bytes
    pool = [c.scheme for c in pick_candidates(adv, None)]
    assert "gguf-q8_0" in pool
    # the decision tree: with a GPU every GPU format comes before llama.cpp's (CPU-built) files; on
    # CPU each GGUF type sits right after the transformers scheme of its precision
    from llmq.advisor.rules import tree

    from llmq.schemes import get_scheme

    t = tree()
    for sit in ("gpu_fits", "gpu_8bit", "gpu_4bit"):  # (schemes that train rank after everything)
        post_training = [s for s in t[sit] if not get_scheme(s).backend_cls().needs_training]
        assert post_training[-len(G.SCHEMES):] == list(G.SCHEMES), sit
    assert t["cpu"][:2] == ["int8-dynamic", "gguf-q8_0"] and "bf16" in t["cpu"]


def test_pipeline_refuses_missing_packages_and_unsupported_architecture_before_weights(tiny, tmp_path, monkeypatch):
    import importlib.util

    import llmq

    bad = _unknown_architecture(tiny, tmp_path)
    with pytest.raises(ConfigError) as e:
        llmq.quantize(str(bad), "gguf-q4_k_m")
    assert "\n" not in str(e.value) and "FrobnicatorForCausalLM" in str(e.value)

    real = importlib.util.find_spec
    for mod, dist in (("llama_cpp", "llama-cpp-python"), ("auto_round", "auto-round")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, _m=mod: None if n == _m else real(n, *a))
        with pytest.raises(MissingDependencyError) as e:
            llmq.quantize(str(bad), "gguf-q8_0")
        msg = str(e.value)
        assert "\n" not in msg and dist in msg and "pip install 'llmq[gguf]'" in msg


def test_cost_key_measures_an_importance_matrix_apart():
    """With calibration the job is mostly the imatrix forward: bench_scale measures it as its own row."""
    from llmq.schemes import get_scheme

    sch = get_scheme("gguf-q4_k_m")
    cls = sch.backend_cls()
    assert cls.cost_key(sch, sch.config()) == "gguf-q4_k_m"
    assert cls.cost_key(sch, sch.config(calibration="wikitext2", n_samples=16, seqlen=512)) == "gguf-q4_k_m+imatrix"
