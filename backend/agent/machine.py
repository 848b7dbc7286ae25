"""This machine: what it offers the cluster (CPUs, memory, GPUs) and the figures each
heartbeat reports, from psutil and NVML (or nvidia-smi)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class NodeResources:
    gpu: int
    cpu_cores: float
    memory_gb: float

    def as_json(self) -> dict[str, float]:
        return {"gpu": self.gpu, "cpu_cores": self.cpu_cores, "memory": self.memory_gb}


def _visible_gpu_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset): Ray and CUDA honour it, so do we."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry == "-1":
            break  # CUDA stops at the first invalid entry
        entries.append(entry)
    return entries


def _nvml_gpu_count() -> int | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError: no driver, no device
        return None


def _nvidia_smi(*args: str) -> list[str] | None:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        result = subprocess.run(
            [executable, *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _torch_gpu_count() -> int | None:
    try:
        import torch  # heavy, so the last resort (it also covers ROCm builds)
    except ImportError:
        return None
    try:
        return int(torch.cuda.device_count())
    except Exception:
        return None


def detect_gpus() -> int:
    """GPUs on this machine: NVML, then nvidia-smi, then torch.cuda; 0 when none answers."""
    count = _nvml_gpu_count()
    if count is None:
        lines = _nvidia_smi("-L")
        count = len([line for line in lines if line.startswith("GPU ")]) if lines else None
    if count is None:
        count = _torch_gpu_count()
    count = count or 0
    visible = _visible_gpu_entries()
    return count if visible is None else min(count, len(visible))


def detect_resources(
    *, cpus: float | None = None, memory_gb: float | None = None, gpus: int | None = None
) -> NodeResources:
    """What this machine offers; given values win over detected ones."""
    if cpus is None:
        cpus = float(psutil.cpu_count(logical=True) or os.cpu_count() or 1)
    if memory_gb is None:
        # Rounded down to 0.1 GB so the node never promises more than it has.
        memory_gb = math.floor(psutil.virtual_memory().total / GIB * 10) / 10
    if gpus is None:
        gpus = detect_gpus()
    return NodeResources(gpu=gpus, cpu_cores=cpus, memory_gb=memory_gb)


def _percent(value: float) -> float:
    return round(min(100.0, max(0.0, float(value))), 2)


def _gpu_indices() -> list[int] | None:
    visible = _visible_gpu_entries()
    if visible is None or not all(e.isdigit() for e in visible):
        return None  # unset, or UUIDs: report every device
    return [int(e) for e in visible]


def _nvml_gpu_sample() -> tuple[float, float] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            indices = _gpu_indices() or list(range(pynvml.nvmlDeviceGetCount()))
            utilization, used = [], 0
            for index in indices:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                utilization.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                used += pynvml.nvmlDeviceGetMemoryInfo(handle).used
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    if not utilization:
        return None
    return sum(utilization) / len(utilization), used / GIB


def _nvidia_smi_gpu_sample() -> tuple[float, float] | None:
    lines = _nvidia_smi(
        "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"
    )
    if not lines:
        return None
    wanted = _gpu_indices()
    utilization, used_mib = [], 0.0
    for line in lines:
        try:
            index, util, memory = (float(part) for part in line.split(","))
        except ValueError:
            continue  # "[N/A]" on some boards
        if wanted is None or int(index) in wanted:
            utilization.append(util)
            used_mib += memory
    if not utilization:
        return None
    return sum(utilization) / len(utilization), used_mib / 1024


def sample_metrics(gpus: int = 0) -> dict[str, float]:
    """One heartbeat sample: CPU and memory from psutil; GPU figures from NVML (pynvml) or
    nvidia-smi when the node has GPUs, else none. Not torch.cuda: asking it for device
    memory would hold a CUDA context (hundreds of MB per GPU) in the agent for its lifetime.
    """
    memory = psutil.virtual_memory()
    sample = {
        "cpu_percent": _percent(psutil.cpu_percent(interval=None)),
        "memory_used_gb": round((memory.total - memory.available) / GIB, 3),
        "memory_percent": _percent(memory.percent),
    }
    if gpus > 0:
        gpu = _nvml_gpu_sample() or _nvidia_smi_gpu_sample()
        if gpu is not None:
            sample["gpu_utilization"] = _percent(gpu[0])
            sample["gpu_memory_used_gb"] = round(gpu[1], 3)
    return sample


def address_towards(url: str) -> str:
    """This machine's address on its route to ``url``'s host: where the gateway's side of
    the network reaches it, found without a default route (a UDP connect sends nothing)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
