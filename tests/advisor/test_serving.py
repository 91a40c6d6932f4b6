"""``llmq advise --serve vllm``: the ranking follows vLLM's kernels on each GPU generation (FP8 on
Hopper/Ada, INT8 W8A8 on Ampere, Marlin W4A16 for batch-1 latency), says why, and its commands
write the format vLLM reads."""

from __future__ import annotations

import json

import pytest

from llmq.advisor import serving
from llmq.advisor.advice import advise
from llmq.errors import ConfigError
from llmq.schemes import SCHEMES, get_scheme

N = 8_000_000_000  # 4-bit "works" in the rule of thumb here, so rank follows the kernels


def order(arch: str, batch: int) -> list[str]:
    adv = advise(N, device="cuda", gpu_memory_gb=80, gpu_arch=arch, batch_size=batch, serve="vllm")
    return [c.scheme for c in adv.candidates if c.status in ("recommended", "ok")]


def first_of(names: list[str], *among: str) -> str:
    return next(n for n in names if n in among)


@pytest.mark.parametrize("arch", ["hopper", "ada", "blackwell"])
def test_fp8_is_the_8bit_and_throughput_pick_where_gpus_have_fp8(arch):
    assert order(arch, 16)[0] == "fp8"
    assert first_of(order(arch, 1), "fp8", "int8-dynamic", "int8-static") == "fp8"


def test_ampere_prefers_int8_w8a8_and_marlin_for_latency():
    big = order("ampere", 16)
    assert big[0] in ("int8-dynamic", "int8-static") and big.index("int8-dynamic") < big.index("fp8")
    assert order("ampere", 1)[0] in ("awq-int4", "gptq-int4")
    assert serving.vllm("w8a8-fp8", "ampere", 1).kernel.startswith("FP8 Marlin")


def test_turing_has_no_marlin():
    names = order("turing", 1)
    assert names[0] in ("int8-dynamic", "int8-static")
    assert "older GPTQ/AWQ kernels" in serving.vllm("w4a16", "turing", 1).why


def test_reasons_commands_and_slow_paths():
    adv = advise(N, device="cuda", gpu_memory_gb=80, gpu_arch="hopper", serve="vllm")
    by = {c.scheme: c for c in adv.candidates}
    assert any("Marlin" in r for r in by["gptq-int4"].reasons)
    assert by["int8-dynamic"].command.endswith("--format compressed-tensors")
    assert by["gptq-int4"].command.endswith("--format compressed-tensors")
    assert "--format" not in by["fp8"].command and "--format" not in by["bf16"].command  # fp8's own format
    for s in ("bnb-nf4", "gguf-q4_k_m", "gptq-int3", "qat-8da4w"):
        assert by[s].status == "avoid" and any("no fast kernel" in r for r in by[s].reasons)
    d = json.loads(json.dumps(adv.to_dict(), default=str))
    assert d["serve"]["engine"] == "vllm" and d["serve"]["gpu_arch"] == "hopper"


def test_every_scheme_declares_a_known_vllm_layout():
    known = {"w8a8-fp8", "w8a8-int8", "w4a16", "w8a16", "16-bit", ""}
    assert {get_scheme(s).serve_as for s in SCHEMES} <= known
    for s in SCHEMES:  # a scheme vLLM serves fast is one llmq can write in a format vLLM reads
        if get_scheme(s).serve_as in ("w8a8-int8", "w8a8-fp8", "w4a16"):
            assert get_scheme(s).config(format="compressed-tensors").format == "compressed-tensors"


def test_arch_from_capability_and_bad_requests():
    assert serving.arch_of((8, 6)) == "ampere" and serving.arch_of((9, 0)) == "hopper"
    assert serving.resolve_arch(None, [(8, 9)]) == "ada"
    with pytest.raises(ConfigError, match="--gpu-arch"):
        serving.resolve_arch(None, [])
    with pytest.raises(ConfigError, match="invalid"):
        serving.resolve_arch("volta", [])
    with pytest.raises(ConfigError, match="llmq advises for: vllm"):
        advise(N, device="cuda", gpu_memory_gb=80, gpu_arch="ada", serve="tgi")
    with pytest.raises(ConfigError, match="GPU server"):
        advise(N, device="cpu", serve="vllm")
