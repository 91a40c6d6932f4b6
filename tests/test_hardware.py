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


def _write(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_cgroup_v2_limit_is_the_tightest_ancestor(tmp_path):
    """A container's limit set on a parent group binds its children; the reclaimable file cache counts as free."""
    root = tmp_path / "cg"
    _write(tmp_path / "self", "0::/outer/inner\n")
    _write(root / "outer" / "memory.max", str(12 * 2**30))
    _write(root / "outer" / "memory.current", str(5 * 2**30))
    _write(root / "outer" / "memory.stat", f"anon 1\ninactive_file {2**30}\n")
    _write(root / "outer" / "inner" / "memory.max", "max")
    assert hardware.cgroup_memory(str(tmp_path / "self"), str(root)) == (12 * 2**30, 8 * 2**30)


def test_cgroup_v1_and_no_limit(tmp_path):
    root = tmp_path / "cg"
    _write(tmp_path / "self", "4:memory:/job\n0::/\n")
    _write(root / "memory" / "job" / "memory.limit_in_bytes", str(6 * 2**30))
    _write(root / "memory" / "job" / "memory.usage_in_bytes", str(2**30))
    _write(root / "memory" / "job" / "memory.stat", "total_inactive_file 0\n")
    _write(root / "memory.max", "max")  # the v2 root: no limit
    assert hardware.cgroup_memory(str(tmp_path / "self"), str(root)) == (6 * 2**30, 5 * 2**30)
    _write(root / "memory" / "job" / "memory.limit_in_bytes", str(2**63 - 4096))  # v1's "unlimited"
    assert hardware.cgroup_memory(str(tmp_path / "self"), str(root)) is None
    assert hardware.cgroup_memory(str(tmp_path / "missing")) is None


def test_ram_gb_is_capped_by_the_cgroup(monkeypatch):
    monkeypatch.setattr(hardware, "cgroup_memory", lambda: (3 * 2**30, 2**30))
    total, avail = hardware.ram_gb()
    assert total == 3.0 and avail == 1.0


def test_native_bf16_reads_the_x86_flags(tmp_path):
    from llmq.hardware import native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert native_bf16(str(info)) is True
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma f16c\n")  # this VM's kind: AVX2 only
    assert native_bf16(str(info)) is False
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # aarch64: no x86 flags to read
    assert native_bf16(str(info)) is None and native_bf16(str(tmp_path / "missing")) is None
