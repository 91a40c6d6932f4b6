import pytest

from llmq.backends.gptqmodel import GPTQModelBackend, fitting_group_sizes
from llmq.backends.gptqmodel import AWQConfig, GPTQConfig
from llmq.schemes import get_scheme


def test_fitting_group_sizes():
    assert fitting_group_sizes([576, 1536]) == [64, 32, 16]  # SmolLM2: 128 does not fit
    assert fitting_group_sizes([4096, 11008]) == [256, 128, 64, 32, 16]  # Llama-2-7B
    assert fitting_group_sizes([100]) == []


def test_kernel_choice_avoids_machete_on_cuda():
    b = GPTQModelBackend(get_scheme("gptq-int4"), GPTQConfig())
    assert b.post_quant_kernel("cuda") == "torch" and b.post_quant_kernel("cpu") == "auto"
    a = GPTQModelBackend(get_scheme("awq-int4"), AWQConfig())
    assert a.post_quant_kernel("cuda") == "auto"


def test_skip_modules_become_negative_dynamic_rules(tiny_model_dir):
    from llmq.models import resolve_model

    cfg = resolve_model(tiny_model_dir).config()
    b = GPTQModelBackend(get_scheme("gptq-int4"), GPTQConfig(skip_modules=("down_proj",)))
    q = b.gptqmodel_config(cfg)
    keys = set(q.dynamic)
    assert keys == {r"-:^model\.layers\.0\.mlp\.down_proj$", r"-:^model\.layers\.1\.mlp\.down_proj$"}
    assert q.bits == 4 and q.group_size == 128 and not q.lm_head


@pytest.mark.parametrize("gs, ok", [(128, True), (64, True), (-1, True), (256, False)])
def test_validate_model_group_sizes(tiny_model_dir, gs, ok):
    from llmq.errors import ConfigError
    from llmq.models import resolve_model

    b = GPTQModelBackend(get_scheme("gptq-int4"), GPTQConfig(group_size=gs))
    if ok:
        b.validate_model(resolve_model(tiny_model_dir))
    else:
        with pytest.raises(ConfigError, match="group sizes that fit this model: 128, 64, 32, 16"):
            b.validate_model(resolve_model(tiny_model_dir))


def test_awq_on_cpu_searches_in_fp32_but_saves_and_runs_in_bf16(tiny_model_dir, tmp_path):
    """llmq quantizes AWQ in fp32 on CPU (its searches need it) but GPTQModel's AVX-512 AWQ kernel is
    fast only with bf16 activations: the folder keeps its unquantized tensors in bf16 (no fp32
    embedding), and ``llmq.load`` runs an fp32 AWQ folder (older llmq) in bf16 too."""
    import json

    import torch
    from safetensors import safe_open

    import llmq
    from llmq.advisor import estimate, params
    from llmq.models import folder_size, read_json

    out = tmp_path / "awq"
    qm = llmq.quantize(tiny_model_dir, "awq-int4", device="cpu", group_size=64, calibration="builtin", n_samples=8,
                       seqlen=64)
    assert qm.model.model.model.embed_tokens.weight.dtype == torch.float32  # the searches ran in fp32
    qm.save(out)
    assert read_json(out / "config.json")["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.down_proj.scales").dtype == torch.float16  # packed layer untouched
    est = estimate.estimate_scheme(params.profile(str(tiny_model_dir)), "awq-int4", device="cpu", group_size=64)
    assert est.bytes == pytest.approx(folder_size(out), rel=0.05)
    model, _ = llmq.load(out, device="cpu")
    assert model.dtype == torch.bfloat16
    assert type(model.model.layers[0].mlp.down_proj).__name__.endswith("AwqLinear")

    cfg = json.loads((out / "config.json").read_text())  # an fp32 folder, as llmq wrote them before
    (out / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    old, _ = llmq.load(out, device="cpu")
    assert old.dtype == torch.bfloat16
    fp32, _ = llmq.load(out, device="cpu", dtype=torch.float32)  # an explicit dtype is kept
    assert fp32.dtype == torch.float32
    x = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(old(x).logits.float(), fp32(x).logits, atol=0.1, rtol=0.1)


# -- compressed-tensors export (pack-quantized W4A16) -------------------------------------------
@pytest.mark.parametrize("scheme,kw", [("gptq-int4", {"group_size": 32}), ("awq-int4", {"group_size": 64})])
def test_gptq_and_awq_export_the_same_codes_as_compressed_tensors(tiny_model_dir, tmp_path, scheme, kw):
    """One quantization saved twice: GPTQModel's folder and the compressed-tensors one (written from
    it). Scales equal bit for bit, plain transformers reloads the export with the GPTQ/AWQ
    folder's logits (both computed in fp32: the only difference is the GPTQ kernels' fp16
    dequantization), and the config is what vLLM parses."""
    import json

    import torch
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    import llmq

    qm = llmq.quantize(tiny_model_dir, scheme, device="cpu", calibration="builtin", n_samples=8, seqlen=64, **kw)
    native = qm.save(tmp_path / "native")
    ct = qm.save(tmp_path / "ct", format="compressed-tensors")
    qc = json.loads((ct / "config.json").read_text())["quantization_config"]
    cfg = QuantizationConfig.model_validate(qc)
    assert qc["format"] == "pack-quantized" and qc["ignore"] == ["lm_head"]
    (group,) = cfg.config_groups.values()
    sym = scheme == "gptq-int4"
    assert (group.weights.num_bits, group.weights.group_size, group.weights.symmetric) == (4, kw["group_size"], sym)
    nat, out = load_file(str(native / "model.safetensors")), load_file(str(ct / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    assert out[f"{name}.weight_scale"].dtype == torch.float16
    assert out[f"{name}.weight_scale"].equal(nat[f"{name}.scales"].T)
    assert (f"{name}.weight_zero_point" in out) == (not sym)
    assert json.loads((ct / "llmq.json").read_text())["config"]["format"] == "compressed-tensors"
    x = torch.tensor([list(range(5, 45))])
    a, _ = llmq.load(native, device="cpu", dtype=torch.float32)
    # asymmetric (AWQ) packed zero points load only dequantized with transformers 5.25 + compressed-tensors
    # 0.20 (llm-compressor#1618); llmq.load does the same (CompressedTensorsBackend.load_kwargs)
    kw = {} if sym else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    b = AutoModelForCausalLM.from_pretrained(ct, dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        la, lb = a(x).logits, b(x).logits
    assert float((la - lb).abs().max()) <= 2e-3 * float(la.abs().max())


def test_export_refuses_act_order_and_odd_bits(tmp_path):
    import torch
    from safetensors.torch import save_file

    from llmq.backends.compressed import export_gptq_folder
    from llmq.errors import ConfigError

    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "gptq", "bits": 3, "group_size": 32}}')
    with pytest.raises(ConfigError, match="4/8-bit"):
        export_gptq_folder(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32, '
                                          '"sym": true}}')
    save_file({"l.qweight": torch.zeros(8, 64, dtype=torch.int32), "l.qzeros": torch.zeros(2, 8, dtype=torch.int32),
               "l.scales": torch.ones(2, 64, dtype=torch.float16),
               "l.g_idx": torch.arange(64, dtype=torch.int32).flip(0) // 32}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="act-order"):
        export_gptq_folder(tmp_path, tmp_path / "out")
