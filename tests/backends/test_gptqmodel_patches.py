import types

import pytest
import torch

from llmq.backends import gptqmodel_patches as P


def _processor(group_size, sym):
    from gptqmodel.looper.awq_processor import AWQProcessor

    self = types.SimpleNamespace(qcfg=types.SimpleNamespace(group_size=group_size, sym=sym, bits=4))
    self._pseudo_quantize_tensor_into = types.MethodType(AWQProcessor._pseudo_quantize_tensor_into, self)
    return self


@pytest.mark.parametrize("sym", [False, True])
def test_fast_clip_selects_the_same_bounds_as_gptqmodel(sym):
    """The batched-matmul clip search must agree with GPTQModel's own implementation."""
    if not P.supported():
        pytest.fail("llmq pins gptqmodel 7.7 in CI; a new version needs this patch re-checked")
    P.apply()
    stock = P.original_compute_best_clip
    torch.manual_seed(0)
    w = torch.randn(256, 128) * 0.05
    w[3, :7] *= 20  # outliers make clipping matter
    x = torch.randn(2, 300, 128)
    self = _processor(64, sym)
    a, b = stock(self, w, x), P.fast_compute_best_clip(self, w, x)
    assert a.shape == b.shape
    assert torch.equal(a, b) or (a - b).abs().max() / a.abs().max() < 1e-6
    assert (a < w.reshape(256, 2, 64).abs().amax(-1, keepdim=True)).any()  # some groups really are clipped


def test_apply_enables_fp32_awq_packing():
    assert P.apply()
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    assert torch.float32 in AwqTorchLinear.SUPPORTS_DTYPES


def test_gptqmodel_logs_leave_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    P.redirect_logs()
    from gptqmodel.looper import loop_processor

    assert loop_processor._PROJECT_LOG_DIR == tmp_path / "cache" / "gptqmodel-logs"


def test_layer_progress_says_the_time_per_layer_and_what_is_left(capsys):
    """From the second layer on, each line gives the rate so far and the time left at that rate."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(num_hidden_layers=4)
            self.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in range(4))

    m, t = M(), iter([0.0, 120.0, 240.0, 250.0])
    hooks = P.layer_progress(m, "gptq-int4", clock=lambda: next(t))
    x = torch.zeros(1)
    for _ in range(2):  # a layer that runs again (GPTQ replays it) prints nothing more
        for layer in m.layers:
            layer(x)
    for h in hooks:
        h.remove()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["llmq: gptq-int4: layer 1/4",
                     "llmq: gptq-int4: layer 2/4 (2 min per layer; about 6 min to go)",
                     "llmq: gptq-int4: layer 3/4 (2 min per layer; about 4 min to go)",
                     "llmq: gptq-int4: layer 4/4 (83 s per layer; about 83 s to go)"]
