"""Hardware detection and the flags that override it."""

from __future__ import annotations

import pytest

from llmq import hardware
from llmq.errors import ConfigError


def test_detects_this_machine():
    hw = hardware.detect()
    assert hw.cpu_cores >= 1 and hw.ram_gb > 0
    assert hw.device in ("cpu", "cuda")
    if hw.device == "cpu":
        assert hw.memory_gb <= hw.ram_gb and hw.source["device"] == "detected"


def test_flags_override_detection():
    hw = hardware.detect("cpu", ram_gb_override=12)
    assert (hw.device, hw.ram_gb, hw.memory_gb, hw.source["ram_gb"]) == ("cpu", 12.0, 12.0, "flag")
    hw = hardware.detect("cuda:0", gpu_memory_gb=80)
    assert (hw.device, hw.memory_gb, hw.source["gpu_memory_gb"]) == ("cuda", 80.0, "flag")
    assert "80.0 GB usable" in hw.describe()


def test_gpu_memory_alone_implies_cuda():
    hw = hardware.detect(gpu_memory_gb=24)
    assert hw.device == "cuda" and hw.memory_gb == 24.0


def test_cuda_without_gpu_or_memory_is_one_line(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_gpus", lambda: [])
    with pytest.raises(ConfigError, match="--gpu-memory"):
        hardware.detect("cuda")


def test_detected_gpu_uses_free_memory(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_gpus", lambda: [hardware.GPU(0, "A", 80.0, 70.5), hardware.GPU(1, "B", 24, 20)])
    hw = hardware.detect()
    assert hw.device == "cuda" and hw.memory_gb == 70.5 and hw.source["gpu_memory_gb"].startswith("detected")


@pytest.mark.parametrize("kw", [{"device": "tpu"}, {"gpu_memory_gb": -1}, {"ram_gb_override": 0}])
def test_bad_flags(kw):
    with pytest.raises(ConfigError):
        hardware.detect(**kw)


def test_cpu_name_reads_cpuinfo_and_falls_back(tmp_path):
    from llmq.hardware import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n"
                    "flags\t\t: fpu avx512f avx512_vnni avx512_bf16 avx512_vnni_extra\n")
    assert cpu_name(str(info)) == "AMD EPYC 9654 (avx512_vnni, avx512_bf16)"
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert cpu_name(str(info)) == "Old CPU (no AVX512-VNNI/BF16, no AMX)"
    assert cpu_name(str(tmp_path / "missing"))  # platform's answer, never empty
