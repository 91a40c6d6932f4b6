"""llmq.streaming: a checkpoint quantized block by block holds a layer and a shard, not the model.

The memory check runs each path in its own process and samples that process's anonymous RSS (no
cgroup, no memcap): on a ~150 MB bf16 random Llama (24 layers), int8-dynamic written block by block
stays under half the fp32 model's size above the process's baseline, a cap the whole-model path
(transformers' quantize-on-load + save_pretrained) exceeds; both folders give the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SHAPE = dict(hidden=512, intermediate=1536, layers=24, heads=8, kv_heads=4)

PROBE = textwrap.dedent('''
    import json, sys, threading, time
    import llmq, llmq.streaming
    from llmq.backends.torchao import TorchAoBackend
    from llmq.schemes import get_scheme

    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    src, out, path = sys.argv[1:4]
    llmq.streaming.SHARD_BYTES = 24 * 2**20   # several shards: the index and the merged metadata are exercised
    sch = get_scheme("int8-dynamic")
    b = TorchAoBackend(sch, sch.config())
    import torch, transformers, torchao.quantization  # imported before the baseline
    base, peak, done = anon(), [0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], anon())
            time.sleep(0.002)
    t = threading.Thread(target=sample); t.start()
    try:
        if path == "streamed":
            import pathlib; pathlib.Path(out).mkdir(); b.quantize(src, None, "cpu").place(out)
        else:
            m = b._quantize_whole(src, "cpu", b.torchao_config(src)[1])
            m.save_pretrained(out)
            del m
    finally:
        done.append(1); t.join()
    print(json.dumps({"growth": peak[0] - base}))
''')


@pytest.fixture(scope="module")
def scale_model(tmp_path_factory):
    from llmq.testing import random_llama_streamed, tiny_tokenizer

    return random_llama_streamed(tmp_path_factory.mktemp("scale") / "m", tiny_tokenizer(), **SHAPE,
                                 max_shard_bytes=64 * 2**20)


def _growth(src, out, path) -> int:
    # a fixed mmap threshold: glibc otherwise raises it as big blocks are freed and keeps the freed
    # layers of a small model in its heap, measuring the allocator's cache instead of what is held
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    r = subprocess.run([sys.executable, "-c", PROBE, str(src), str(out), path], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["growth"]


def test_streamed_quantization_holds_a_layer_not_the_model(scale_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llmq.backends.torchao import enable_loading

    fp32_bytes = 4 * sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(scale_model).parameters())
    streamed = _growth(scale_model, tmp_path / "s", "streamed")
    whole = _growth(scale_model, tmp_path / "w", "whole")
    cap = fp32_bytes / 2  # measured: streamed ~100 MiB, whole ~200 MiB, cap 145 MiB
    assert whole > cap, (whole, cap)  # transformers' quantize-on-load holds the quantized model, then copies it
    assert streamed < cap, (streamed, cap)
    shards = sorted(p.name for p in (tmp_path / "s").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "s" / "model.safetensors.index.json").is_file()
    enable_loading()
    x = torch.tensor([list(range(5, 69))])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tmp_path / "s")(x).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path / "w")(x).logits
    assert torch.equal(a, b)


def test_random_llama_streamed_is_reproducible_and_sharded(tmp_path):
    from safetensors import safe_open

    from llmq.testing import random_llama_streamed, tiny_tokenizer

    tok = tiny_tokenizer()
    kw = dict(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, max_shard_bytes=60_000)
    a = random_llama_streamed(tmp_path / "a", tok, **kw)
    b = random_llama_streamed(tmp_path / "b", tok, **kw)
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert len(files) > 1 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    index = json.loads((a / "model.safetensors.index.json").read_text())
    with safe_open(str(a / index["weight_map"]["model.norm.weight"]), "pt") as f:
        assert f.get_tensor("model.norm.weight").float().eq(1).all()
    assert all((a / f).stat().st_size <= 60_000 + 20_000 for f in files)  # one block may overflow a shard


def test_not_streamable_when_checkpoint_names_differ(tmp_path):
    from safetensors.torch import load_file, save_file

    from llmq.streaming import BlockModel, NotStreamable
    from llmq.testing import tiny_llama

    src = tiny_llama(tmp_path / "t")
    sd = load_file(src / "model.safetensors")
    save_file({k.replace("model.", "transformer.", 1): v for k, v in sd.items()}, str(src / "model.safetensors"),
              metadata={"format": "pt"})
    import torch

    with pytest.raises(NotStreamable, match="not in the checkpoint"):
        BlockModel(src, torch.float32)
