"""int8-static: calibration methods, qparams, granularity, skip modules, embeddings, save/reload,
errors and the size estimate. Plumbing on the tiny random Llama; quality is scripts/bench_int8.py."""

from __future__ import annotations

import json

import pytest

from llmq.backends import int8_calibration as C
from llmq.backends import int8_static as S
from llmq.errors import ConfigError

TEXT = ["The quick brown fox jumps over the lazy dog. " * 40, "Python is a programming language. " * 40]


def _observed(values, sym=True):
    import torch

    obs = C._observer(sym)
    obs(torch.as_tensor(values, dtype=torch.float32).reshape(-1, 64))
    return obs


@pytest.fixture(scope="module")
def outlier_obs():
    """A Linear input: 64k N(0, 1) values and 4 outliers at 80 (a massive-activation token)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024 * 64, generator=g)
    x[[5, 77, 901, 4000]] = torch.tensor([80.0, -80.0, 80.0, 80.0])
    return _observed(x)


def test_entropy_and_percentile_clip_an_outlier_minmax_does_not(outlier_obs):
    s = {m: C.activation_qparams(outlier_obs, m, percentile=99.99)[0].item() for m in S.METHODS}
    assert s["minmax"] == pytest.approx(80 / 127.5, rel=1e-3)  # keeps the outlier
    assert s["percentile"] < s["minmax"] / 4  # 99.99 % of |x| lies well below 80
    assert s["entropy"] < s["minmax"] / 4
    assert s["percentile"] * 127.5 > 3.0  # but neither clips the Gaussian bulk (|x| <= ~4.5)
    assert s["entropy"] * 127.5 > 2.0


def test_percentile_100_is_minmax_and_lower_percentiles_clip_more(outlier_obs):
    full = C.activation_range(outlier_obs, "percentile", percentile=100.0)
    assert full[1] == pytest.approx(80.0, rel=1e-3)
    t999 = C.activation_range(outlier_obs, "percentile", percentile=99.9)[1]
    t9999 = C.activation_range(outlier_obs, "percentile", percentile=99.99)[1]
    assert 2.5 < t999 < t9999 < 80


def test_entropy_threshold_keeps_a_dense_range_and_cuts_a_sparse_tail():
    import numpy as np

    flat = np.ones(2048)
    assert C.entropy_threshold(flat, 1.0) == pytest.approx(1.0, abs=1e-3)  # nothing to gain by clipping
    tail = np.zeros(2048)
    tail[:400] = 1e6 * np.exp(-np.arange(400) / 40)  # a peaked bulk ...
    tail[2040] = 1.0  # ... and one far outlier
    assert 0.05 < C.entropy_threshold(tail, 1.0) < 0.25  # the bulk ends at 400/2048 = 0.195


def test_asymmetric_gives_zero_points_symmetric_does_not():
    import torch

    x = torch.rand(64 * 100) * 5 - 0.5  # [-0.5, 4.5): a SiLU-like range
    for m in S.METHODS:
        _, zp = C.activation_qparams(_observed(x, sym=False), m, sym=False)
        assert zp.item() != 0 and zp.dtype == torch.int8 and zp.shape == (1, 1, 1)
        scale, zp = C.activation_qparams(_observed(x, sym=True), m, sym=True)
        assert zp.item() == 0 and scale.shape == (1, 1, 1)


def _in_memory(src, **kw):
    """The whole model quantized in memory (:func:`quantize_model`) with the calibration windows
    ``llmq.quantize`` cuts for the same settings: the reference the streamed folder must equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq import calibration

    cfg = S.Int8StaticConfig(calibration=TEXT, **kw)
    cal = calibration.build(TEXT, AutoTokenizer.from_pretrained(src), n_samples=cfg.n_samples, seqlen=cfg.seqlen,
                            seed=cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    S.quantize_model(model, cal.samples, cfg)
    return model


def _quantized(tiny_model_dir, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(" ".join(TEXT))["input_ids"]
    samples = [ids[i:i + 64] for i in range(0, 256, 64)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = S.Int8StaticConfig(calibration=TEXT, **kw)
    qp = S.quantize_model(model, samples, cfg)
    return model, qp, cfg


def test_model_zero_points_and_granularity(tiny_model_dir):
    from torchao.quantization import Int8Tensor

    m, qp, _ = _quantized(tiny_model_dir, sym=False, weight_granularity="per_tensor", dynamic_fallback="off")
    w = m.model.layers[0].mlp.down_proj.weight
    assert isinstance(w, Int8Tensor) and w.scale.numel() == 1
    assert any(v["zero_point"].item() != 0 for v in qp.values())
    assert w.act_quant_zero_point is not None
    m, qp, _ = _quantized(tiny_model_dir, dynamic_fallback="off")
    w = m.model.layers[0].mlp.down_proj.weight
    assert tuple(w.scale.shape) == (w.shape[0], 1)  # per output channel
    assert w.act_quant_scale.shape == (1, 1, 1) and w.act_quant_zero_point is None
    assert all(v["zero_point"].item() == 0 for v in qp.values())


def test_skip_modules_stay_float_and_embeddings_are_int8_and_tied(tiny_model_dir):
    import torch
    from torchao.quantization import Int8Tensor

    m, qp, _ = _quantized(tiny_model_dir, skip_modules=("*.down_proj",))
    assert not any(k.endswith("down_proj") for k in qp)
    for layer in m.model.layers:
        assert type(layer.mlp.down_proj.weight) is torch.nn.Parameter
        assert not isinstance(layer.mlp.down_proj.weight.data, Int8Tensor)
        assert isinstance(layer.mlp.up_proj.weight, Int8Tensor)
    assert isinstance(m.model.embed_tokens.weight, Int8Tensor)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    m2, _, _ = _quantized(tiny_model_dir, quantize_embeddings=False)
    assert not isinstance(m2.model.embed_tokens.weight, Int8Tensor)


def test_smoothing_stores_a_pre_scale(tiny_model_dir):
    m, qp, _ = _quantized(tiny_model_dir, smooth_alpha=0.5)
    w = m.model.layers[1].self_attn.q_proj.weight
    assert w.act_pre_scale is not None and w.act_pre_scale.shape == (w.shape[1],)
    assert "smooth" in qp["model.layers.1.self_attn.q_proj"]


def test_quantize_save_reload_identical_logits(tiny_model_dir, tmp_path):
    import torch
    from torchao.quantization import Int8Tensor
    from transformers import AutoModelForCausalLM

    import llmq
    from llmq.models import read_json

    kw = dict(n_samples=4, seqlen=32, calibration_method="entropy", sym=False, skip_modules=["*.o_proj"])
    q = llmq.quantize(str(tiny_model_dir), "int8-static", device="cpu", calibration=TEXT, **kw)
    x = torch.tensor([list(range(5, 45))])
    with torch.no_grad():  # calibrated layer by layer and written block by block = the whole model in memory
        before = _in_memory(tiny_model_dir, **kw)(x).logits
    out = q.save(tmp_path / "q")
    from llmq.schemes import plugin_of_folder

    assert plugin_of_folder(out) is S.Int8StaticBackend  # its loader registers the static-scale names
    model, _ = llmq.load(out, device="cpu")
    with torch.no_grad():
        after = model(x).logits
    assert torch.equal(before, after)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert isinstance(w, Int8Tensor) and w.act_quant_scale is not None and w.act_quant_zero_point is not None
    assert not isinstance(model.model.layers[0].self_attn.o_proj.weight.data, Int8Tensor)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plain = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, patch already registered
    with torch.no_grad():
        assert torch.equal(plain(x).logits, before)
    meta = read_json(out / "llmq.json")
    assert meta["scheme"] == "int8-static" and meta["config"]["calibration_method"] == "entropy"


def test_size_estimate_matches_the_folder(tiny_model_dir, tmp_path):
    import llmq
    from llmq.advisor.estimate import estimate_scheme
    from llmq.advisor.params import profile
    from llmq.models import folder_size

    q = llmq.quantize(str(tiny_model_dir), "int8-static", device="cpu", calibration=TEXT, n_samples=4, seqlen=32)
    out = q.save(tmp_path / "q")
    est = estimate_scheme(profile(str(tiny_model_dir)), "int8-static", calibration=TEXT, n_samples=4, seqlen=32)
    real = folder_size(out)
    assert abs(est.bytes - real) / real < 0.1, (est.bytes, real)
    assert real < folder_size(tiny_model_dir) / 3


@pytest.mark.parametrize("kw, msg", [
    ({"calibration_method": "kl"}, "calibration_method='kl' is invalid"),
    ({"percentile": 0}, "percentile must be in (0, 100]"),
    ({"percentile": 100.5}, "percentile must be in (0, 100]"),
    ({"calibration_method": "entropy", "percentile": 99.9}, "percentile applies to calibration_method='percentile'"),
    ({"calibration_method": "minmax", "percentile": 99.99}, "'minmax' ignores it"),
    ({"calibration": []}, "int8-static needs calibration data"),
    ({"smooth_alpha": 1.5}, "smooth_alpha must be in [0, 1]"),
])
def test_one_line_errors_before_any_weights_load(kw, msg, tiny_model_dir, monkeypatch):
    from llmq import core

    def boom(*a, **k):  # loading weights would mean validation came too late
        raise AssertionError("weights loaded before validation")

    monkeypatch.setattr(S.Int8StaticBackend, "quantize", boom)
    with pytest.raises(ConfigError) as e:
        core.quantize(str(tiny_model_dir), "int8-static", device="cpu", **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_the_percentile_recorded_is_the_one_used():
    """llmq.json recorded percentile 99.99 for entropy and minmax runs, which use none."""
    cfg = S.Int8StaticConfig(calibration="builtin")
    assert cfg.effective_percentile == 99.99 and cfg.to_dict()["percentile"] == 99.99
    assert cfg.with_overrides(percentile=99.9).to_dict()["percentile"] == 99.9
    for method in ("entropy", "minmax"):
        c = cfg.with_overrides(calibration_method=method)
        assert c.effective_percentile is None and c.to_dict()["percentile"] is None


def test_static_without_calibration_data_is_refused():
    with pytest.raises(ConfigError, match="int8-static needs calibration data"):
        S.Int8StaticConfig(calibration=None)


def test_percentile_100_is_valid():
    assert S.Int8StaticConfig(calibration="wikitext2", percentile=100).percentile == 100


@pytest.mark.parametrize("flags, msg", [
    (["--calibration-method", "kl"], "calibration_method='kl' is invalid"),
    (["--percentile", "0"], "percentile must be in (0, 100]"),
    (["--smooth-alpha", "2"], "smooth_alpha must be in [0, 1]"),
])
def test_cli_flags_validated_before_any_weights_load(flags, msg, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from llmq.cli import main

    def boom(*a, **k):
        raise AssertionError("weights loaded before validation")

    monkeypatch.setattr(S.Int8StaticBackend, "quantize", boom)
    code = main(["run", "--model", str(tiny_model_dir), "--scheme", "int8-static", "-o", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_cli_flags_reach_the_config(tiny_model_dir, tmp_path):
    from llmq.cli import main
    from llmq.models import read_json

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(TEXT))
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_model_dir), "--scheme", "int8-static", "-o", str(out), "--no-sample",
                 "--calibration", str(calib), "--n-samples", "2", "--seqlen", "32", "--calibration-method", "entropy",
                 "--smooth-alpha", "0.5", "--keep-embeddings"]) == 0
    cfg = read_json(out / "llmq.json")["config"]
    assert (cfg["calibration_method"], cfg["smooth_alpha"], cfg["quantize_embeddings"]) == ("entropy", 0.5, False)


def test_accuracy_gate_runs_on_int8_static(tiny_model_dir, tmp_path):
    """--max-accuracy-loss (the seeds' target_accuracy_loss) evaluates an int8-static output against
    its original and records the verdict (plumbing: the tiny random model sits at chance)."""
    from llmq.pipeline.run import run

    res = run(str(tiny_model_dir), "int8-static", output=tmp_path / "g", device="cpu", sample=False,
              overrides={"calibration": TEXT, "n_samples": 2, "seqlen": 32}, tasks="arc_easy", limit=4,
              max_accuracy_loss=100.0)
    assert res.code == 0 and res.report is not None
    assert "arc_easy" in json.dumps(res.report) and res.report["gate"]["passed"] is True


def test_dynamic_modules_quantize_activations_per_token_and_reload(tiny_model_dir, tmp_path):
    """``dynamic_modules``: those Linears get no static scale (per-token activations at run time);
    the mixed folder reloads with identical logits."""
    import torch
    from torchao.quantization import Int8Tensor

    import llmq

    kw = dict(n_samples=2, seqlen=32, dynamic_modules=["*.down_proj"])
    q = llmq.quantize(str(tiny_model_dir), "int8-static", device="cpu", calibration=TEXT, **kw)
    ref = _in_memory(tiny_model_dir, **kw)
    layer = ref.model.layers[0]
    assert isinstance(layer.mlp.down_proj.weight, Int8Tensor) and layer.mlp.down_proj.weight.act_quant_scale is None
    assert layer.mlp.up_proj.weight.act_quant_scale is not None
    x = torch.tensor([list(range(5, 45))])
    with torch.no_grad():
        before = ref(x).logits
    model, _ = llmq.load(q.save(tmp_path / "m"), device="cpu")
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    assert model.model.layers[0].mlp.down_proj.weight.act_quant_scale is None


def _plant_outlier(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose layer-0 down_proj input has a massive activation on one
    frequent token (as in SmolLM2): channel ``c`` is 0 in every embedding but that token's, where
    it is an ordinary 3-sigma value, and intermediate neuron 0 of layer 0 reads only ``c``, 20x
    amplified, so only down_proj's input is extreme."""
    import collections

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    t = collections.Counter(tok(" ".join(TEXT))["input_ids"]).most_common(1)[0][0]
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    c = 3
    with torch.no_grad():
        emb = m.model.embed_tokens.weight  # tied: the head changes too, which is fine here
        emb[:, c] = 0.0
        emb[t, c] = 3 * float(emb[t].pow(2).mean().sqrt())
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[c] = 0.0  # nothing else writes channel c
        mlp = m.model.layers[0].mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[0] = 0.0
            w[0, c] = 20.0
    out = tmp_path / "planted"
    m.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_automatic_fallback_picks_the_planted_outlier_layer(tiny_model_dir, tmp_path):
    """The measured criterion: layer 0's down_proj (static error >> per-token error) falls back
    to per-token activations; with a budget of one Linear, only it; the rest stay static."""
    planted = _plant_outlier(tiny_model_dir, tmp_path)
    m, qp, cfg = _quantized(planted, dynamic_fallback=4.0, max_dynamic_fraction=1 / 14, smooth_alpha="off")
    dyn = [n for n, q in qp.items() if "dynamic" in q]
    assert dyn == ["model.layers.0.mlp.down_proj"], {n: q.get("error_ratio") for n, q in qp.items()}
    assert qp[dyn[0]]["dynamic"] == "fallback" and qp[dyn[0]]["error_ratio"] > 4.0
    assert m.model.layers[0].mlp.down_proj.weight.act_quant_scale is None  # per token at run time
    assert m.model.layers[1].mlp.down_proj.weight.act_quant_scale is not None
    assert max(q["error_ratio"] for n, q in qp.items() if n not in dyn) < qp[dyn[0]]["error_ratio"]
    s = S.activation_summary(qp, cfg)
    assert (s["static_linears"], s["dynamic_linears"]) == (13, 1)
    _, qp_off, _ = _quantized(planted, dynamic_fallback=None, smooth_alpha=None)
    assert not any("dynamic" in q for q in qp_off.values())
    _, qp_zero, _ = _quantized(planted, max_dynamic_fraction=0.0, smooth_alpha=None)
    assert not any("dynamic" in q for q in qp_zero.values())


def test_fallback_is_recorded_in_llmq_json_and_the_card(tiny_model_dir, tmp_path):
    import llmq
    from llmq.models import read_json

    planted = _plant_outlier(tiny_model_dir, tmp_path)
    q = llmq.quantize(str(planted), "int8-static", device="cpu", calibration=TEXT, n_samples=4, seqlen=64,
                      max_dynamic_fraction=1 / 14, smooth_alpha="off")
    out = q.save(tmp_path / "q")
    a = read_json(out / "llmq.json")["activations"]
    assert a["dynamic"]["model.layers.0.mlp.down_proj"]["dynamic"] == "fallback"
    assert a["static_linears"] + a["dynamic_linears"] == 14 and a["lm_head_activations"] == "float"
    from llmq.modelcard import card_facts

    rows = dict(card_facts(read_json(out / "llmq.json")).rows)
    assert "model.layers.0.mlp.down_proj" in rows["Per-token fallback"]
    assert rows["Activations"].startswith("static int8 per tensor in 13 Linears")


def test_lm_head_activations_float_is_weight_only_int8(tiny_model_dir):
    from torchao.quantization import Int8Tensor

    m, _, _ = _quantized(tiny_model_dir)
    w = m.lm_head.weight
    assert isinstance(w, Int8Tensor) and w.act_quant_kwargs is None and w is m.model.embed_tokens.weight
    m, _, _ = _quantized(tiny_model_dir, lm_head_activations="int8")
    assert m.lm_head.weight.act_quant_kwargs is not None


@pytest.mark.parametrize("kw, msg", [
    ({"dynamic_fallback": 0.5}, "dynamic_fallback must be a number >= 1"),
    ({"max_dynamic_fraction": 2}, "max_dynamic_fraction must be in [0, 1]"),
    ({"lm_head_activations": "fp8"}, "lm_head_activations='fp8' is invalid"),
])
def test_fallback_and_head_options_validated(kw, msg):
    with pytest.raises(ConfigError) as e:
        S.Int8StaticConfig(calibration="wikitext2", **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_smooth_alpha_per_pattern_longest_match_wins_and_off_skips():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    got = S.alphas_for(names, {"*": 0.75, "*.down_proj": "off", "model.layers.1.mlp.down_proj": 0.5})
    assert got == {"model.layers.0.self_attn.q_proj": 0.75, "model.layers.1.mlp.down_proj": 0.5}
    assert S.alphas_for(names, 0.3) == dict.fromkeys(names, 0.3) and S.alphas_for(names, "off") == {}
    with pytest.raises(ConfigError, match="smooth_alpha must be in"):
        S.Int8StaticConfig(calibration="wikitext2", smooth_alpha={"*": 2})


def test_per_pattern_smoothing_reaches_the_weights(tiny_model_dir):
    m, qp, _ = _quantized(tiny_model_dir, smooth_alpha={"*": 0.8, "*.down_proj": "off"}, dynamic_fallback="off")
    assert m.model.layers[0].mlp.down_proj.weight.act_pre_scale is None and "smooth" not in \
        qp["model.layers.0.mlp.down_proj"]
    assert m.model.layers[0].mlp.up_proj.weight.act_pre_scale is not None


def test_gemma3_int8_static_reproduces_and_fixes_the_embed_scale_garbage(tmp_path, monkeypatch):
    """int8-static on a tiny Gemma-3: the int8 embedding's ``embed_scale`` buffer is left uninitialized
    by transformers' torchao loader (NaN in deterministic mode): without ``restore_buffers`` the
    verification fails (non-finite logits), with it the output is within the int8 bound."""
    import math

    import torch

    import llmq
    from llmq.testing import tiny_gemma
    from llmq.verify import verify

    src = tiny_gemma(tmp_path / "gemma3")
    out = llmq.quantize(str(src), "int8-static", device="cpu", calibration="builtin", n_samples=4,
                        seqlen=64).save(tmp_path / "g-static")
    good = json.loads((out / "llmq.json").read_text())["verification"]
    assert good["passed"] and good["kld"] < 0.01
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        monkeypatch.setattr(S, "restore_buffers", lambda model: [])  # the loader as it was before the fix
        broken = verify(src, out)
        monkeypatch.undo()
        fixed = verify(src, out)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert not broken["passed"] and math.isinf(broken["kld"])
    assert fixed["passed"] and fixed["kld"] == pytest.approx(good["kld"], rel=1e-6)
