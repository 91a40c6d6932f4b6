"""What this machine can hold: CPU cores, RAM, CUDA devices and their free memory.

Detected once, cheaply (``/proc/meminfo``, ``torch.cuda.mem_get_info``), and overridable, because
the advice is often wanted for another machine (``--device cuda --gpu-memory 80``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from llmq.errors import ConfigError

GB = 1024**3  # memory is sold and reported by torch in GiB; "80 GB" GPUs hold ~80 GiB


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float
    capability: tuple[int, int] | None = None  # CUDA compute capability (9, 0) = Hopper


@dataclass
class Hardware:
    """The machine the advice is for. ``device`` is what the model would run on."""

    device: str  # "cpu" or "cuda"
    cpu_cores: int
    ram_gb: float  # total RAM
    ram_available_gb: float | None = None
    gpus: list[GPU] = field(default_factory=list)
    gpu_memory_gb: float | None = None  # what one model may use on the chosen GPU
    source: dict[str, str] = field(default_factory=dict)  # field -> "detected" | "flag" | "assumed"

    @property
    def memory_gb(self) -> float:
        """The memory the model must fit in on its device."""
        if self.device == "cuda":
            return float(self.gpu_memory_gb or 0.0)
        return float(self.ram_available_gb if self.ram_available_gb is not None else self.ram_gb)

    def describe(self) -> str:
        cpu = f"{self.cpu_cores} CPU cores, {self.ram_gb:.1f} GB RAM"
        if self.ram_available_gb is not None:
            cpu += f" ({self.ram_available_gb:.1f} GB available)"
        if self.device == "cuda":
            names = ", ".join(g.name for g in self.gpus) or "a CUDA GPU"
            return f"cuda: {names}, {self.gpu_memory_gb:.1f} GB usable; {cpu}"
        return f"cpu only: {cpu}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory_gb"] = self.memory_gb
        return d


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


#: CPU features that change int8/bf16 speed ratios: torchao's int8 matmul takes uint8 activations on
#: CPUs with VNNI and no AMX (issue #11); native bf16 and AMX change what bf16 and int8 GEMMs cost
SPEED_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo(cpuinfo: str) -> tuple[str, set[str] | None] | None:
    """``(model name, x86 flags or None)`` from ``/proc/cpuinfo``; None where it cannot be read."""
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), None)
    return name, flags


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and which of :data:`SPEED_FLAGS` it has (``/proc/cpuinfo`` on Linux,
    ``platform.processor()`` elsewhere), for benchmark records: the same code's speed ratios differ
    between CPUs."""
    info = _cpuinfo(cpuinfo)
    if info is None:
        return platform.processor() or platform.machine() or "unknown CPU"
    name, flags = info
    have = [f for f in SPEED_FLAGS if f in (flags or set())]
    return f"{name} ({', '.join(have) or 'no AVX512-VNNI/BF16, no AMX'})"


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU multiplies bf16 natively (AVX512-BF16 or AMX); None where
    ``/proc/cpuinfo`` has no x86 flags to tell. Without it a bf16 matmul ran 3-5x slower than fp32
    (``scripts/bench_cpu_dtypes.py``, AMD EPYC without AVX512-BF16)."""
    flags = (_cpuinfo(cpuinfo) or ("", None))[1]
    return None if not flags else bool(flags & {"avx512_bf16", "amx_bf16"})


#: cgroup v1 reports "no limit" as a huge number (2**63 rounded down to a page)
_NO_LIMIT = 2**60


def cgroup_memory(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """``(limit, available)`` in bytes of the tightest memory limit on this process's cgroup and its
    ancestors (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or None when none is set. A
    container, a Slurm job or a ``systemd-run -p MemoryMax=`` scope kills a process at its cgroup's
    limit whatever ``/proc/meminfo`` says. Available: the limit less what the group holds, not
    counting the inactive file cache the kernel reclaims first."""
    from pathlib import Path

    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    best: tuple[int, int] | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2 unified hierarchy
            base, files = Path(root), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = Path(root) / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                  "total_inactive_file")
        else:
            continue
        d = base / path.lstrip("/")
        while True:
            try:
                raw = (d / files[0]).read_text().strip()
                limit = _NO_LIMIT if raw == "max" else int(raw)
                if limit < _NO_LIMIT:
                    used = int((d / files[1]).read_text())
                    stat = dict(l.split() for l in (d / "memory.stat").read_text().splitlines() if " " in l)
                    avail = max(limit - used + int(stat.get(files[2], 0)), 0)
                    if best is None or avail < best[1]:
                        best = (limit, avail)
            except (OSError, ValueError):
                pass
            if d == base or d.parent == d:
                break
            d = d.parent
    return best


def ram_gb() -> tuple[float, float | None]:
    """(total, available) in GiB: ``/proc/meminfo`` on Linux (``sysconf`` elsewhere), capped by the
    process's cgroup memory limit when one is set (:func:`cgroup_memory`)."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        total = info["MemTotal"] / GB
        avail = info.get("MemAvailable")
        cg = cgroup_memory()
        if cg is not None:
            total = min(total, cg[0] / GB)
            avail = cg[1] if avail is None else min(avail, cg[1])
        return total, (avail / GB if avail is not None else None)
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, None
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            return 0.0, None


def usable_ram_gb() -> float:
    """What a job may use now in GiB: the available RAM (cgroup-capped), or the total where the OS
    does not say what is available."""
    total, avail = ram_gb()
    return avail or total


def cuda_gpus() -> list[GPU]:
    """CUDA devices torch can see, with free memory now (another process may hold some)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append(GPU(i, torch.cuda.get_device_name(i), total / GB, free / GB,
                       tuple(torch.cuda.get_device_capability(i))))
    return out


def detect(device: str | None = None, gpu_memory_gb: float | None = None, ram_gb_override: float | None = None,
           *, probe_gpu: bool = True) -> Hardware:
    """This machine, with any flag taking precedence over what is detected.

    ``--gpu-memory`` without a visible GPU (advice for another machine) implies ``--device cuda``;
    ``--device cuda`` without a GPU here needs ``--gpu-memory``.
    """
    if device is not None:
        device = device.strip().lower()
        if device.startswith("cuda"):
            device = "cuda"
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"device={device!r} is invalid; choose 'cpu' or 'cuda'.")
    for name, v in (("gpu_memory_gb", gpu_memory_gb), ("ram_gb", ram_gb_override)):
        if v is not None and not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{name} must be a positive number of GB, got {v!r}.")
    src: dict[str, str] = {}
    total, avail = ram_gb()
    src["ram_gb"] = "detected"
    if ram_gb_override is not None:
        total, avail = float(ram_gb_override), None
        src["ram_gb"] = "flag"
    gpus = cuda_gpus() if probe_gpu and device != "cpu" else []
    if device is None:
        device = "cuda" if (gpus or gpu_memory_gb is not None) else "cpu"
        src["device"] = "detected" if gpus or gpu_memory_gb is None else "implied by --gpu-memory"
    else:
        src["device"] = "flag"
    gmem = None
    if device == "cuda":
        if gpu_memory_gb is not None:
            gmem = float(gpu_memory_gb)
            src["gpu_memory_gb"] = "flag"
        elif gpus:
            # The largest free GPU: llmq runs a model on one device.
            gmem = max(g.free_gb for g in gpus)
            src["gpu_memory_gb"] = "detected (free now)"
        else:
            raise ConfigError("--device cuda but torch sees no CUDA GPU here: also pass --gpu-memory GB "
                              "(the GPU the advice is for).")
    return Hardware(device=device, cpu_cores=cpu_cores(), ram_gb=total, ram_available_gb=avail, gpus=gpus,
                    gpu_memory_gb=gmem, source=src)
