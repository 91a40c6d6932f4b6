import numpy as np

from llmq.eval import cost


def test_param_memory_counts_stored_bytes(tiny):
    model, _ = tiny
    n = sum(p.numel() for p in model.parameters())
    # tied embeddings are counted once; fp32 = 4 bytes per parameter
    assert cost.param_memory(model) == 4 * n + sum(b.numel() * b.element_size() for b in model.buffers())


def test_size_on_disk(tiny_model_dir, tiny_fp4_dir):
    full, fp4 = cost.size_on_disk(tiny_model_dir), cost.size_on_disk(tiny_fp4_dir)
    assert full == sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert fp4 < full / 2
    assert cost.size_on_disk(None) is None


def test_peak_rss_sees_an_allocation_in_the_block():
    with cost.PeakRSS() as p:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del a
    assert p.peak >= 64 * 2**20


def test_speed_is_measured_after_warm_up(tiny):
    model, tok = tiny
    s = cost.speed(model, tok, prefill_tokens=32, decode_tokens=4, repeats=1)
    assert s["prefill_tokens_per_s"] > 0 and s["decode_tokens_per_s"] > 0
    assert "32-token prompt, 4 greedy decode steps" in s["protocol"]
