"""QAT plumbing on a tiny random Llama; one slow test on the real demo model."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from llmq.pipeline import qat as QP
from llmq.backends.qat import convert as QC
from llmq.backends.qat import train as QT  # noqa: E402
from llmq.errors import CalibrationError, ConfigError, UnknownNameError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from llmq.testing import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("qat") / "tiny", layers=2)


@pytest.fixture(scope="module")
def texts():
    import pydoc_data.topics

    return list(pydoc_data.topics.topics.values())


SMALL = dict(seqlen=32, batch_size=2, warmup_steps=1, eval_windows=2, progress=False)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_prepare_inserts_torchao_fake_quantizers_in_decoder_linears_only(tiny):
    from torchao.quantization.qat import FakeQuantizedLinear

    model = _load(tiny)
    n_linear = sum(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if ".layers." in f".{n}")
    QC.prepare_fake_quant(model, QP.qat_config("qat-int4"))
    assert QC.count_fake_quantized(model) == n_linear == 14
    assert not isinstance(model.lm_head, FakeQuantizedLinear)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight_fake_quantizer.config.group_size == 32
    assert q.activation_fake_quantizer is None  # weight-only
    m2 = _load(tiny)
    QC.prepare_fake_quant(m2, QP.qat_config("qat-w8a8"))
    assert m2.model.layers[0].mlp.up_proj.activation_fake_quantizer is not None
    # the torchao exports also fake-quantize the (tied) embedding and lm_head: int8 per row, weight-only
    from torchao.quantization.qat import FakeQuantizedEmbedding

    assert isinstance(m2.model.embed_tokens, FakeQuantizedEmbedding) and isinstance(m2.lm_head, FakeQuantizedLinear)
    assert m2.lm_head.activation_fake_quantizer is None and m2.lm_head.weight is m2.model.embed_tokens.weight
    assert QC.count_fake_quantized(m2) == n_linear + 2
    m3 = _load(tiny)
    QC.prepare_fake_quant(m3, QP.qat_config("qat-w8a8", quantize_embeddings=False))
    assert QC.count_fake_quantized(m3) == n_linear and not isinstance(m3.lm_head, FakeQuantizedLinear)


@pytest.mark.parametrize("scheme", ["qat-8da4w", "qat-w8a8", "qat-int8"])
def test_convert_gives_real_quantized_weights_that_match_fake_quant(tiny, scheme):
    from torchao.quantization import IntxUnpackedToInt8Tensor

    model = _load(tiny).eval()
    sch = QP.qat_config(scheme)
    QC.prepare_fake_quant(model, sch)
    x = torch.randint(0, 400, (1, 24))
    with torch.no_grad():
        fake = model(x).logits
    QC.convert_fake_quant(model, sch)
    assert QC.count_fake_quantized(model) == 0
    w = model.model.layers[1].mlp.down_proj.weight
    assert isinstance(w, IntxUnpackedToInt8Tensor)
    with torch.no_grad():
        real = model(x).logits
    torch.testing.assert_close(real, fake, atol=1e-4, rtol=1e-4)  # training saw what inference computes


def test_qat_torchao_scheme_saves_a_folder_that_reloads_with_from_pretrained(tiny, texts, tmp_path):
    from torchao.quantization import IntxUnpackedToInt8Tensor

    out = tmp_path / "out"
    res = QP.qat(str(tiny), "qat-8da4w", data=texts, steps=3, lr=1e-3, output=out, **SMALL)
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["scheme"] == "qat-8da4w" and meta["training"]["steps_done"] == 3 and meta["backend"] == "qat"
    assert meta["training"]["tokens_trained"] == 3 * 2 * 32
    assert meta["training"]["data"].startswith("list:") and meta["config"]["data"].endswith("strings>")
    assert not QP.default_checkpoint_dir(out).exists()  # the finished model replaced the checkpoint
    from llmq.advisor.estimate import estimate_scheme
    from llmq.advisor.params import profile

    est = estimate_scheme(profile(str(tiny)), "qat-8da4w", device="cpu").bytes
    assert abs(est / meta["size_bytes"]["after"] - 1) < 0.05, (est, meta["size_bytes"])  # the advisor's size is right
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "torchao"
    model = _load(out)
    assert isinstance(model.model.layers[0].self_attn.o_proj.weight, IntxUnpackedToInt8Tensor)
    from torchao.quantization import Int8Tensor

    # int8 per-row embedding, tied lm_head: the folder is no bigger than what int8-dynamic writes
    assert isinstance(model.model.embed_tokens.weight, Int8Tensor) and model.lm_head.weight is model.model.embed_tokens.weight
    plain = estimate_scheme(profile(str(tiny)), "qat-8da4w", device="cpu", quantize_embeddings=False).bytes
    assert meta["size_bytes"]["after"] < plain
    x = torch.randint(0, 400, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, res.model(x).logits)


# -- qat-int4: packed GPTQ export ---------------------------------------------------------------
def _gptq_v1_dequantize(f, prefix):
    """Decode one GPTQ v1 linear from a safetensors file, independently of GPTQModel: int32 words of
    eight 4-bit codes along in_features (low nibble first), zero points stored minus one, fp16 scales;
    computed in fp32 (``codes - zero`` and its product with an fp16 scale are exact there)."""
    qw, qz = f.get_tensor(prefix + ".qweight"), f.get_tensor(prefix + ".qzeros")
    scales, g_idx = f.get_tensor(prefix + ".scales").float(), f.get_tensor(prefix + ".g_idx").long()
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    codes = ((qw.unsqueeze(1) >> shifts.view(1, -1, 1)) & 15).reshape(-1, qw.shape[1])  # [in, out]
    zeros = ((qz.unsqueeze(2) >> shifts.view(1, 1, -1)) & 15).reshape(qz.shape[0], -1) + 1  # [groups, out]
    return ((codes - zeros[g_idx]).float() * scales[g_idx]).T  # [out, in]


def _bf16_kept(model):
    """Round what the GPTQ export keeps in bf16 (embeddings, norms) the same way on the reference."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not n.endswith("proj.weight"):
                p.copy_(p.to(torch.bfloat16).float())


def test_qat_int4_export_is_exactly_the_trained_grid_and_reloads_through_llmq_load(tiny, texts, tmp_path):
    """After QAT, the packed GPTQ weights in the saved file equal torchao's fake-quantized weights
    bit for bit, and the folder reloaded by ``llmq.load`` computes the fake-quantized model's logits."""
    from safetensors import safe_open
    from torchao.quantization.qat import FakeQuantizedLinear
    from transformers import AutoTokenizer

    import llmq

    cfg = QP.qat_config("qat-int4", data=texts, steps=3, lr=1e-3, seqlen=32, batch_size=2, warmup_steps=1,
                       eval_windows=2)
    model = _load(tiny)
    QC.prepare_fake_quant(model, cfg)
    QT.train(model, QT.build_data(cfg, AutoTokenizer.from_pretrained(tiny)), cfg, device="cpu", progress=False,
            teacher=_load(tiny).eval())
    _bf16_kept(model)
    fq = {n: m.weight_fake_quantizer(m.weight).detach().clone() for n, m in model.named_modules()
          if isinstance(m, FakeQuantizedLinear)}
    assert len(fq) == 14 and all(m.weight_fake_quantizer.scale.dtype == torch.float16 for m in model.modules()
                                 if isinstance(m, FakeQuantizedLinear))  # training saw fp16 scales
    x = torch.randint(0, 400, (2, 24))
    with torch.no_grad():
        fake = model(x).logits
    QC.to_gptq(model, cfg)
    out = tmp_path / "gptq"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for name, w in fq.items():
            assert torch.equal(_gptq_v1_dequantize(f, name), w), name  # exactly the grid training saw
        assert not any(k.endswith("proj.weight") for k in f.keys())
    for dtype, tol in ((torch.float32, 1e-3), ("auto", 3e-2)):
        # fp32: GPTQModel dequantizes in its fp16 scale dtype (weights rounded to 2^-11 relative), so
        # not bit-exact; "auto" = bf16 with the AVX-512 kernel (bf16 activations)
        reloaded, _ = llmq.load(out, device="cpu", dtype=dtype)
        with torch.no_grad():
            real = reloaded(x).logits.float()
        torch.testing.assert_close(real, fake, atol=tol, rtol=tol)
        assert torch.isfinite(real).all()


def test_qat_int4_saves_a_small_gptq_folder_with_card_and_estimate(tiny, texts, tmp_path):
    from safetensors import safe_open

    import llmq
    from llmq.advisor.estimate import estimate_scheme
    from llmq.advisor.params import profile
    from llmq.cli import main

    out = tmp_path / "int4"
    res = QP.qat(str(tiny), "qat-int4", data=texts, steps=2, lr=1e-3, output=out, **SMALL)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["checkpoint_format"], qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) \
        == ("gptq", "gptq", 4, 32, True, False)
    assert json.loads((out / "quantize_config.json").read_text())["quant_method"] == "gptq"
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["backend"] == "qat" and meta["quantization_config"]["quant_method"] == "gptq"
    assert meta["versions"]["gptqmodel"] and meta["training"]["steps_done"] == 2
    with safe_open(str(tiny / "model.safetensors"), "pt") as f:
        fp32_linears = sum(f.get_tensor(k).nbytes for k in f.keys() if k.endswith("proj.weight"))
    size = meta["size_bytes"]["after"]
    assert size < 0.4 * fp32_linears, (size, fp32_linears)  # packed 4-bit, not int8 containers
    est = estimate_scheme(profile(str(tiny)), "qat-int4", device="cpu").bytes
    assert abs(est / size - 1) < 0.05, (est, size)
    model, _ = llmq.load(out, device="cpu")
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    assert isinstance(model.model.layers[1].mlp.down_proj, BaseQuantLinear)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 400, (1, 16))).logits).all()
    assert res.generate("Hello", max_new_tokens=3) is not None  # the in-memory result runs the saved folder
    assert main(["push", str(out), "--repo", "me/tiny-qat4", "--dry-run", "--license", "apache-2.0"]) == 0
    card = (out / "README.md").read_text()
    assert "TorchCpuAvx512Linear" in card and "Packed 4-bit GPTQ" in card and "- gptq" in card
    assert "| Training | quantization-aware training" in card


def test_qat_int4_export_refuses_non_finite_weights(tiny):
    from llmq.errors import CorruptModelError

    model = _load(tiny)
    cfg = QP.qat_config("qat-int4")
    QC.prepare_fake_quant(model, cfg)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("inf")
    with pytest.raises(CorruptModelError, match="up_proj"):
        QC.to_gptq(model, cfg)


def test_qat_int4_refuses_a_group_size_that_does_not_divide_before_weights_load(tiny, texts, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    with pytest.raises(ConfigError, match="group_size=512 does not divide"):
        QP.qat(str(tiny), "qat-int4", data=texts, steps=2, group_size=512, **SMALL)


def test_llmq_run_with_a_named_qat_scheme_trains_and_advise_never_recommends_it(tiny, texts, tmp_path):
    import llmq
    from llmq.pipeline.run import run

    opts = dict(data=texts, steps=2, seqlen=32, batch_size=2, warmup_steps=1, eval_windows=2)
    res = run(str(tiny), "qat-w8a8", output=tmp_path / "run", overrides=opts, device="cpu")
    assert res.code == 0 and res.scheme == "qat-w8a8" and res.sample is not None
    assert res.meta["training"]["steps_done"] == 2 and res.meta["config"]["act_bits"] == 8
    model, _ = llmq.load(res.path, device="cpu")
    assert model.model.layers[0].self_attn.q_proj.weight.__class__.__name__ == "IntxUnpackedToInt8Tensor"
    adv = llmq.advise(str(tiny), device="cpu")
    listed = [c.scheme for c in adv.candidates]
    assert {"qat-int4", "qat-w8a8"} <= set(listed) and not adv.recommended.scheme.startswith("qat-")
    assert all(listed.index(q) > listed.index("int8-dynamic") for q in ("qat-w8a8", "qat-int8"))


def test_llmq_run_checkpoints_qat_and_resume_continues_after_ctrl_c(tiny, texts, tmp_path, monkeypatch,
                                                                     ctrl_c_at_step):
    """``llmq run --scheme qat-*``: Ctrl-C mid-training keeps the checkpoint next to the output and
    writes no output; ``--resume`` continues from the saved step, and the checkpoint is removed once
    the model is saved. ``--resume`` with a scheme that does not train is a one-line error."""
    from llmq.errors import LlmqError
    from llmq.pipeline.qat import default_checkpoint_dir
    from llmq.pipeline.run import run

    out = tmp_path / "run"
    opts = dict(data=texts, steps=4, checkpoint_every=2, seqlen=32, batch_size=2, warmup_steps=1, eval_windows=2)
    with ctrl_c_at_step(3), pytest.raises(LlmqError, match="interrupted at step 2.*--resume"):
        run(str(tiny), "qat-int4", output=out, overrides=opts, device="cpu", sample=False)
    ck = default_checkpoint_dir(out)
    assert (ck / QT.CKPT_META).is_file() and not out.exists()
    res = run(str(tiny), "qat-int4", output=out, overrides=opts, device="cpu", sample=False, resume=True)
    t = res.meta["training"]
    assert res.code == 0 and t["resumed_from_step"] == 2 and t["steps_done"] == 4 and not ck.exists()
    with pytest.raises(ConfigError, match="does not train"):
        run(str(tiny), "int8-dynamic", output=tmp_path / "x", resume=True)


def test_training_changes_weights_and_fp32_twin_has_no_fake_quant(tiny, texts, tmp_path):
    before = _load(tiny).model.layers[0].mlp.up_proj.weight.detach().clone()
    twin = QP.qat(str(tiny), "qat-int4", data=texts, steps=2, lr=1e-3, fake_quant=False, objective="lm", **SMALL)
    w = twin.model.model.layers[0].mlp.up_proj.weight
    assert type(w) is torch.nn.Parameter and not torch.equal(w.detach(), before)
    assert twin.backend.training["method"].startswith("fine-tuning without fake quantization")


def test_distilled_fp32_twin_is_the_original(tiny, texts):
    """The benchmark's shortcut, checked: the original model is the minimum of the distillation
    objective (loss 0, gradient 0 up to float rounding: orders of magnitude below a fake-quantized
    student's), so the fp32 twin of a distilled run is the original, and ``llmq.qat`` refuses to
    spend time training it. (Training it anyway would only let Adam, which normalises gradient
    size, walk the weights along rounding noise.)"""
    from transformers import AutoTokenizer

    cfg = QP.qat_config("qat-int4", data=texts, steps=3, seqlen=32, batch_size=2, eval_windows=2)
    assert cfg.objective == "distill"  # the default
    x = QT.build_data(cfg, AutoTokenizer.from_pretrained(tiny)).train[:2]
    teacher = _load(tiny).eval()
    with torch.no_grad():
        target = teacher(input_ids=x).logits

    def loss_and_grad(model):
        model.train()
        loss = QT.distill_loss(model(input_ids=x).logits, target)
        loss.backward()
        return float(loss), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()

    twin_loss, twin_grad = loss_and_grad(_load(tiny))
    student = _load(tiny)
    QC.prepare_fake_quant(student, cfg)
    q_loss, q_grad = loss_and_grad(student)
    assert abs(twin_loss) < 1e-7 and q_loss > 1e-4, (twin_loss, q_loss)
    assert twin_grad < 1e-4 * q_grad, (twin_grad, q_grad)
    with pytest.raises(ConfigError, match="twin of a distilled QAT run is the original"):
        QP.qat(str(tiny), "qat-int4", data=texts, steps=2, fake_quant=False, **SMALL)


def test_distillation_loss_is_the_kl_to_the_original_and_lm_is_still_available(tiny, texts):
    """The default objective trains on KL(original || fake-quantized student): the first step's loss
    is that divergence on the first batch, computed independently here. (That it wins back
    rounding loss is a real-model claim: ``test_short_qat_on_demo_model_reduces_quantization_loss``.)"""
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    cfg = QP.qat_config("qat-int4", data=texts, steps=2, lr=1e-4, seqlen=32, batch_size=2, warmup_steps=1,
                       eval_windows=2)
    data = QT.build_data(cfg, AutoTokenizer.from_pretrained(tiny))
    teacher, model = _load(tiny).eval(), _load(tiny)
    QC.prepare_fake_quant(model, cfg)
    x = data.train[QT.batch_order(len(data.train), cfg.steps, cfg.batch_size, cfg.seed)[0]]
    with torch.no_grad():
        p_t = F.softmax(teacher(input_ids=x).logits, -1)
        log_s = F.log_softmax(model(input_ids=x).logits, -1)
    expected = float((p_t * (p_t.log() - log_s)).sum(-1).mean())
    hist = QT.train(model, data, cfg, device="cpu", progress=False, teacher=teacher)
    assert expected > 1e-4 and hist["loss"][0] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    with pytest.raises(ConfigError, match="needs the original model as teacher"):
        QT.train(_load(tiny), data, cfg, device="cpu", progress=False)
    lm = QP.qat(str(tiny), "qat-int4", data=texts, steps=2, lr=1e-3, objective="lm", **SMALL)
    assert lm.backend.training["objective"] == "lm" == lm.backend.config.objective
    assert lm.backend.training["loss_first"] > 1.0  # cross-entropy of a random model, not a divergence
    with pytest.raises(ConfigError, match="objective must be one of distill, lm"):
        QP.qat_config("qat-int4", objective="mse")


def test_train_model_without_convert_returns_the_fake_quantized_model_training_saw(tiny, texts):
    """``convert=False`` (the benchmark on a machine without GPTQModel) keeps torchao's fake
    quantizers, so the model it scores computes with the int4 grid, not fp32 weights."""
    from torchao.quantization.qat import FakeQuantizedLinear

    cfg = QP.qat_config("qat-int4", data=texts, steps=2, lr=1e-3, seqlen=32, batch_size=2, warmup_steps=1,
                       eval_windows=2)
    model, training = QT.train_model(tiny, cfg, "cpu", progress=False, convert=False)
    assert QC.count_fake_quantized(model) == 14 and training["steps_done"] == 2
    lin = model.model.layers[0].mlp.up_proj
    assert isinstance(lin, FakeQuantizedLinear)
    x = torch.randn(3, lin.in_features)
    with torch.no_grad():
        wq = lin.weight_fake_quantizer(lin.weight)
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, wq), rtol=0, atol=0)
        assert not torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight), atol=1e-4)
    w = lin.weight.detach()
    assert len(torch.unique(lin.weight_fake_quantizer(w)[0, :32])) <= 16  # 4-bit: at most 16 levels per group


def _run_train(tiny, texts, tmp_path, steps, crash_at=None, resume=False, ckdir=None):
    from transformers import AutoTokenizer

    cfg = QP.qat_config("qat-int4", data=texts, steps=steps, lr=1e-3, seed=3, checkpoint_every=2,
                       seqlen=32, batch_size=2, warmup_steps=1, eval_windows=2)
    data = QT.build_data(cfg, AutoTokenizer.from_pretrained(tiny))
    model = _load(tiny)
    QC.prepare_fake_quant(model, cfg)

    def on_step(step, loss):
        if step == crash_at:
            raise KeyboardInterrupt

    hist = QT.train(model, data, cfg, device="cpu", checkpoint_dir=ckdir, resume=resume, progress=False,
                   on_step=on_step, teacher=_load(tiny).eval())
    return model, hist


def test_interrupt_then_resume_continues_from_saved_step_and_matches_uninterrupted(tiny, texts, tmp_path):
    from llmq.errors import LlmqError

    ck = tmp_path / "ck"
    with pytest.raises(LlmqError, match="interrupted at step .*--resume"):
        _run_train(tiny, texts, tmp_path, 5, crash_at=3, ckdir=ck)  # checkpoint at step 2, step 3 lost
    state = json.loads((ck / QT.CKPT_META).read_text())
    assert state["step"] == 2
    resumed, hist = _run_train(tiny, texts, tmp_path, 5, resume=True, ckdir=ck)
    assert hist["start_step"] == 2 and hist["steps_done"] == 5 and len(hist["loss"]) == 5
    straight, hist2 = _run_train(tiny, texts, tmp_path, 5)
    assert hist2["loss"] == hist["loss"]  # same seed, same losses, resumed or not
    for (n, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_resume_refuses_a_checkpoint_from_other_settings(tiny, texts, tmp_path):
    ck = tmp_path / "ck"
    _run_train(tiny, texts, tmp_path, 2, ckdir=ck)
    with pytest.raises(ConfigError, match="other settings"):
        _run_train(tiny, texts, tmp_path, 4, resume=True, ckdir=ck)


def test_early_stop_when_gate_holds(tiny, texts):
    res = QP.qat(str(tiny), "qat-int4", data=texts, steps=6, lr=1e-4, max_ppl_increase="50%", eval_every=2, **SMALL)
    t = res.backend.training
    assert t["early_stopped"] and t["steps_done"] == 2  # int4 on a random model is within 50% at the first check
    assert t["heldout_ppl"][0][1] <= t["baseline_heldout_ppl"] * 1.5


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(lr=0), ConfigError, "learning rate must be > 0"),
    (dict(lr=-1e-5), ConfigError, "learning rate must be > 0"),
    (dict(scheme="gptq-int4"), UnknownNameError, "Unknown QAT scheme 'gptq-int4'"),
    (dict(data=[]), CalibrationError, "needs training data"),
    (dict(data=["short text"]), CalibrationError, r"steps=5 x batch_size=2 needs 10"),
    (dict(steps=0), ConfigError, "steps must be a positive integer"),
])
def test_bad_input_is_one_line_before_weights_load(tiny, texts, monkeypatch, kwargs, err, msg):
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights loaded before validation")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    args = dict(scheme="qat-int4", data=texts, steps=5, lr=1e-5)
    args.update(kwargs)
    scheme = args.pop("scheme")
    with pytest.raises(err, match=msg) as e:
        QP.qat(str(tiny), scheme, **args, seqlen=32, batch_size=2, progress=False)
    assert "\n" not in str(e.value)


def test_cli_qat_writes_folder(tiny, texts, tmp_path):
    from llmq.cli import main

    data = tmp_path / "train.txt"
    data.write_text("\n\n".join(texts[:30]))
    out = tmp_path / "cli"
    rc = main(["qat", "--model", str(tiny), "--scheme", "qat-w8a8", "--data", str(data), "--steps", "2",
               "--seqlen", "32", "--batch-size", "2", "-o", str(out)])
    assert rc == 0
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["scheme"] == "qat-w8a8" and meta["training"]["steps_done"] == 2
    assert meta["config"]["quantize_embeddings"] is True
    keep = tmp_path / "keep"
    assert main(["qat", "--model", str(tiny), "--scheme", "w8a8", "--data", str(data), "--steps", "1", "--seqlen", "32",
                 "--batch-size", "2", "--keep-embeddings", "-o", str(keep)]) == 0
    kept = json.loads((keep / "llmq.json").read_text())
    assert kept["config"]["quantize_embeddings"] is False
    assert kept["size_bytes"]["after"] > meta["size_bytes"]["after"]  # fp32 embeddings are the bigger folder
    assert main(["qat", "--model", str(tiny), "--data", str(data), "--lr", "0", "-o", str(tmp_path / "x")]) == 2


#: the slow test's settings: short enough for CI (6-step runs on 2 x 128-token windows), long
#: enough that QAT's effect shows (see README "Quantization-aware training" for the measured times)
SLOW = dict(data="wikitext2", steps=6, lr=5e-5, seed=0, seqlen=128, batch_size=2, warmup_steps=1, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["distill", "lm"])
def test_short_qat_on_demo_model_reduces_quantization_loss(data_dir, monkeypatch, objective):
    """Fair version of "QAT helps": the QAT model's gap to its fp32 twin (same data, steps, seed,
    objective) is smaller than round-to-nearest PTQ's gap on that same twin, on WikiText-2 *test*
    windows (training reads WikiText-2 train text only). With distillation the twin is the original
    (``test_distilled_fp32_twin_is_the_original``); with ``lm`` it is fine-tuned."""
    from transformers import AutoModelForCausalLM

    from llmq.eval.perplexity import perplexity
    from llmq.models import resolve_model

    monkeypatch.setenv("LLMQ_DATA_DIR", str(data_dir))
    qat = QP.qat(None, "qat-int4", objective=objective, **SLOW)
    assert qat.backend.training["data"].endswith("wiki.valid.tokens")  # never the test split
    if objective == "lm":
        twin = QP.qat(None, "qat-int4", fake_quant=False, objective="lm", **SLOW).model
    else:
        twin = AutoModelForCausalLM.from_pretrained(resolve_model(None).local_dir(), dtype=torch.float32)
    ev = dict(seqlen=256, limit=4, progress=False)
    tw = perplexity(twin, qat.tokenizer, "wikitext2", **ev).value
    q = perplexity(qat.hf_model, qat.tokenizer, "wikitext2", **ev).value  # its GPTQ folder, GPTQModel kernels
    QC.ptq(twin, QP.qat_config("qat-int4"))  # the same torchao int4 g32 config, no training
    rtn = perplexity(twin, qat.tokenizer, "wikitext2", **ev).value
    print(f"{objective}: fp32 twin {tw:.3f}, QAT int4 {q:.3f} ({q / tw - 1:+.2%}), RTN int4 of twin {rtn:.3f} "
          f"({rtn / tw - 1:+.2%})")
    assert rtn / tw - 1 > 0.05, (tw, rtn)  # int4 rounding costs this model something to win back
    assert q / tw - 1 < rtn / tw - 1, (tw, q, rtn)


def test_model_card_says_it_was_trained_and_how_to_repeat_it(tiny, texts, tmp_path):
    from llmq.cli import main

    out = tmp_path / "card"
    QP.qat(str(tiny), "qat-8da4w", data=texts, steps=2, lr=1e-4, output=out, **SMALL)
    assert main(["push", str(out), "--repo", "me/tiny-qat", "--dry-run", "--license", "apache-2.0"]) == 0
    card = (out / "README.md").read_text()
    assert "| Training | quantization-aware training (torchao QATConfig prepare/convert): 2 of 2 steps, 128 tokens, " in card
    assert "| Training data | `list:79 strings` (sha256 " in card and "| Training settings | lr 0.0001, batch 2 x 32" in card
    assert "--scheme qat-8da4w --set steps=2 --set lr=0.0001" in card and "data=" not in card.split("--scheme")[1][:200]
    assert "list of strings passed from Python" in card and 'pip install "llmq[torchao]' in card
    assert "- qat" in card and "- int4" in card and "- 4-bit" in card  # tags


@pytest.mark.slow
def test_qat_int4_gptq_folder_has_the_in_memory_qat_models_perplexity_on_demo_model(data_dir, monkeypatch, tmp_path):
    """SmolLM2, 2 QAT steps: the exported GPTQ folder (bf16, GPTQModel's kernel, via ``llmq.load``)
    has the in-memory fake-quantized fp32 model's WikiText-2 test perplexity within 0.5% (4 x 1024),
    and its size is the 4-bit size the advisor estimates (measured: 29.934 vs 29.949, 118.8 MB)."""
    from transformers import AutoModelForCausalLM

    import llmq
    from llmq.advisor.estimate import estimate_scheme
    from llmq.advisor.params import profile
    from llmq.eval.perplexity import perplexity
    from llmq.models import resolve_model

    monkeypatch.setenv("LLMQ_DATA_DIR", str(data_dir))
    src = resolve_model(None)
    path = src.local_dir(progress=False)
    tok = src.tokenizer()
    cfg = QP.qat_config("qat-int4", data="wikitext2", steps=2, lr=5e-5, seed=0, seqlen=128, batch_size=2,
                       warmup_steps=1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    QC.prepare_fake_quant(model, cfg)
    QT.train(model, QT.build_data(cfg, tok), cfg, device="cpu", progress=False,
            teacher=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
    ev = dict(seqlen=1024, limit=4, progress=False)
    fake = perplexity(model, tok, "wikitext2", **ev).value
    QC.to_gptq(model, cfg)
    out = tmp_path / "smol-qat-int4"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    size = (out / "model.safetensors").stat().st_size
    est = estimate_scheme(profile(str(path)), "qat-int4", device="cpu").bytes
    reloaded, _ = llmq.load(out, device="cpu")
    real = perplexity(reloaded, tok, "wikitext2", **ev).value
    print(f"fake-quantized fp32 {fake:.4f}, GPTQ folder {real:.4f} ({real / fake - 1:+.3%}), {size} bytes (est. {est})")
    assert abs(real / fake - 1) < 0.005, (fake, real)
    assert abs(size / est - 1) < 0.02 and size < 0.25 * sum(f.stat().st_size for f in path.glob("*.safetensors"))


def test_qat_int4_exports_its_gptq_codes_as_compressed_tensors(tiny, texts, tmp_path):
    """qat-int4 ``format="compressed-tensors"``: the GPTQ folder it writes, converted; plain
    transformers reloads it with the GPTQ folder's logits (both in fp32)."""
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    import llmq

    qm = QP.qat(str(tiny), "qat-int4", data=texts, steps=2, lr=1e-3, **SMALL)
    native = qm.save(tmp_path / "gptq")
    ct = qm.save(tmp_path / "ct", format="compressed-tensors")
    qc = json.loads((ct / "config.json").read_text())["quantization_config"]
    (group,) = QuantizationConfig.model_validate(qc).config_groups.values()
    assert qc["format"] == "pack-quantized" and (group.weights.group_size, group.weights.symmetric) == (32, True)
    meta = json.loads((ct / "llmq.json").read_text())
    assert meta["training"]["steps_done"] == 2 and meta["config"]["format"] == "compressed-tensors"
    a, b = load_file(str(native / "model.safetensors")), load_file(str(ct / "model.safetensors"))
    assert b["model.layers.0.self_attn.q_proj.weight_scale"].equal(a["model.layers.0.self_attn.q_proj.scales"].T)
    x = torch.tensor([list(range(5, 40))])
    g, _ = llmq.load(native, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        lg, lc = g(x).logits, _load(ct)(x).logits
    assert float((lg - lc).abs().max()) <= 2e-3 * float(lg.abs().max())
    with pytest.raises(ConfigError, match="fp32 twin"):
        QP.qat(str(tiny), "qat-int4", data=texts, steps=2, fake_quant=False, objective="lm",
               format="compressed-tensors", **SMALL)


# -- where training writes: checked (and the output locked) before a weight loads ------------------
def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def no_weights(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights loaded before the request was validated")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def _user_folder(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".bashrc").write_text("x")
    (home / ".ssh" / "id").write_text("secret")
    return home


@pytest.mark.parametrize("case", ["inside-source", "unwritable", "resume-user-folder", "overwrite-user-folder",
                                  "checkpoint-in-output", "checkpoint-user-folder"])
def test_qat_checks_where_it_writes_before_training(tiny, texts, tmp_path, no_weights, case):
    """``qat -o <inside the source>`` used to train, write a checkpoint into the source, then refuse;
    ``qat --resume -o <user folder>`` replaced it. Each is now one line before a weight loads."""
    from llmq.errors import OutputExistsError

    src_before = _tree(tiny)
    home = _user_folder(tmp_path)
    kw = dict(output=tmp_path / "o")
    expect = (ConfigError, "inside the input model folder")
    if case == "inside-source":
        kw = dict(output=tiny / "qat-out")
    elif case == "unwritable":
        kw, expect = dict(output="/proc/llmq-qat-out"), (ConfigError, "Cannot write")
    elif case == "resume-user-folder":
        kw, expect = dict(output=home, resume=True), (OutputExistsError, "exists and is not empty")
    elif case == "overwrite-user-folder":
        kw, expect = dict(output=home, overwrite=True), (OutputExistsError, "not an llmq output")
    elif case == "checkpoint-in-output":
        kw, expect = dict(output=tmp_path / "o", checkpoint_dir=tmp_path / "o" / "ck"), (ConfigError, "inside one another")
    elif case == "checkpoint-user-folder":
        kw, expect = dict(output=tmp_path / "o", checkpoint_dir=home), (OutputExistsError, "not an llmq output")
    with pytest.raises(expect[0], match=expect[1]) as e:
        QP.qat(str(tiny), "qat-w8a8", data=texts, steps=2, **kw, **SMALL)
    assert "\n" not in str(e.value)
    assert _tree(tiny) == src_before and _tree(home) == [".bashrc", ".ssh", ".ssh/id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no output, checkpoint, lock or temp folder


def test_second_qat_to_one_output_fails_at_once(tiny, texts, tmp_path, no_weights, held_elsewhere):
    """The output lock is taken before training: a second ``qat -o`` to an output another process is
    writing fails before it loads a weight (it used to train, then fail at save)."""
    from llmq.errors import OutputLockedError

    out = tmp_path / "o"
    with held_elsewhere(out, "reserve_output") as holder:
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            QP.qat(str(tiny), "qat-w8a8", data=texts, steps=2, output=out, **SMALL)
        assert not out.exists() and not QP.default_checkpoint_dir(out).exists()


def test_run_resume_with_another_model_is_refused_before_weights_load(tiny, texts, tmp_path, monkeypatch,
                                                                     ctrl_c_at_step):
    """``run --scheme qat-* --resume`` with a different model folder (same shape) is refused by the
    pipeline's early check, before a weight loads, instead of continuing the first model's training."""
    from llmq.pipeline.run import run
    from llmq.testing import tiny_llama

    other = tiny_llama(tmp_path / "other", layers=2, seed=7)
    out = tmp_path / "run"
    opts = dict(data=texts, steps=4, checkpoint_every=2, seqlen=32, batch_size=2, warmup_steps=1, eval_windows=2)
    from llmq.errors import LlmqError

    with ctrl_c_at_step(3), pytest.raises(LlmqError, match="interrupted at step 2"):
        run(str(tiny), "qat-w8a8", output=out, overrides=opts, device="cpu", sample=False)
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    with pytest.raises(ConfigError, match="trained from another model"):
        run(str(other), "qat-w8a8", output=out, overrides=opts, device="cpu", sample=False, resume=True)
    with pytest.raises(ConfigError, match=r"other settings \(steps differ\)"):
        run(str(tiny), "qat-w8a8", output=out, overrides={**opts, "steps": 6}, device="cpu", sample=False, resume=True)
    assert (QP.default_checkpoint_dir(out) / QT.CKPT_META).is_file() and not out.exists()
