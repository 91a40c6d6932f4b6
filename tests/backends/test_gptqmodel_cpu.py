import os
import sys

import pytest

from llmq.backends.gptqmodel_cpu import ensure_cpu_workers, prebuild_pack_kernel


def test_cpu_workers_env_is_raised_to_two(monkeypatch):
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "1")
    ensure_cpu_workers()
    assert int(os.environ["GPTQMODEL_CPU_WORKERS"]) >= 2
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "6")
    ensure_cpu_workers()
    assert os.environ["GPTQMODEL_CPU_WORKERS"] == "6"  # a user's larger value is kept


def test_the_cpu_packing_kernel_is_built_once_before_weights_load(monkeypatch, tmp_path, capsys):
    """Only when GPTQModel's cache has no build: the compiler's 1.5 GiB then comes before the model's."""
    from gptqmodel import extension

    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(tmp_path))
    built = []

    def fake_load(name):
        built.append(name)
        (tmp_path / name / "abc").mkdir(parents=True)
        (tmp_path / name / "abc" / f"gptqmodel_{name}.so").write_bytes(b"")
        return {name: True}

    monkeypatch.setattr(extension, "load", fake_load)
    prebuild_pack_kernel()
    prebuild_pack_kernel()
    assert built == ["pack_block_cpu"]
    assert "compiling GPTQModel's CPU packing kernel" in capsys.readouterr().err


_HEAP_PROBE = """
import ctypes, sys
from llmq.backends.gptqmodel_cpu import fix_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo.restype = Info  # mallinfo2 is glibc >= 2.33; these counts fit an int
fixed = sys.argv[1] == "fix" and fix_mmap_threshold()
libc.free(libc.malloc(8 << 20))  # glibc's dynamic threshold rises past 8 MiB here
before = libc.mallinfo().hblks
p = libc.malloc(8 << 20)  # ... so this one comes from the heap, and stays there once freed, unless fixed
print(int(fixed), libc.mallinfo().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "confstr")
                    or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""), reason="glibc's malloc only")
def test_fixed_mmap_threshold_returns_large_blocks_to_the_system():
    """GPTQ's freed per-layer buffers stayed in glibc's heaps (1B peak 1.95 GiB, 1.38 fixed): with the
    threshold fixed at 4 MiB an 8 MiB block is mapped (and unmapped when freed) even after one was freed."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = {a: subprocess.run([sys.executable, "-c", _HEAP_PROBE, a], env=env, capture_output=True, text=True,
                             check=True).stdout.split() for a in ("fix", "default")}
    assert out["fix"] == ["1", "1"]  # fixed: the block is a mapping of its own
    assert out["default"] == ["0", "0"]  # default: the heap took it (what the fix is for)


def test_a_user_set_mmap_threshold_is_kept(monkeypatch):
    from llmq.backends.gptqmodel_cpu import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
