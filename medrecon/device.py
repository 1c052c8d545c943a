"""One device resolver for the whole package: 'auto' | 'cpu' | 'cuda' | 'cuda:N' (or a torch.device)."""
from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch.device for a user's choice. ``None`` or 'auto': CUDA when available, else CPU.

    Asking for CUDA where there is none (or for a GPU index that does not exist) raises InputError."""
    if isinstance(name, torch.device):
        name = str(name)
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or key.startswith("cuda:"):
        idx = key[5:]
        if idx and not idx.isdigit():
            raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:N (N a GPU index)")
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: CUDA is not available on this machine (no GPU or a CPU-only torch "
                             "build); choose cpu or auto (reconstruct: --set solver.device=cpu; train: --device cpu)")
        if idx and int(idx) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        return torch.device(key)
    raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively: a CUDA GPU of compute capability 8 or later
    (Ampere on; ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated, e.g. a V100 or T4),
    an AMD GPU, or a CPU with AVX512-BF16 or AMX (oneDNN's check). Elsewhere bf16 is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and (bool(torch.version.hip)
                                              or torch.cuda.get_device_properties(device).major >= 8)
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device, measured: bool = True) -> str:
    """The network arithmetic for a user's choice: 'fp32', 'bf16', or 'auto': bf16 where ``device`` has it
    natively and the prior's quality in bf16 was ``measured`` (``Denoiser.bf16_measured``), else fp32."""
    if name not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision {name!r}: expected auto, fp32 or bf16")
    if name == "auto":
        return "bf16" if measured and bf16_native(device) else "fp32"
    return name


#: per CUDA device index: the peak allocation before a measurement restarted the counter (``reset_cuda_peak``)
_carried_peak: dict[int, int] = {}


def _cuda_index(device) -> int:
    d = torch.device(device)
    return torch.cuda.current_device() if d.index is None else d.index


def reset_cuda_peak(device, carry: bool = False) -> None:
    """Restart ``device``'s CUDA peak-allocation counter (the start of a run to measure). ``carry``: for a
    measurement inside such a run that needs the counter to itself (``auto_chunk_size``'s trial): the run's peak
    so far still counts in ``cuda_peak_bytes``."""
    i = _cuda_index(device)
    _carried_peak[i] = max(_carried_peak.get(i, 0), torch.cuda.max_memory_allocated(i)) if carry else 0
    torch.cuda.reset_peak_memory_stats(i)


def cuda_peak_bytes(device) -> int:
    """Peak CUDA allocation on ``device`` since its last ``reset_cuda_peak`` without ``carry`` (or the start)."""
    i = _cuda_index(device)
    return max(torch.cuda.max_memory_allocated(i), _carried_peak.get(i, 0))


def cuda_free_bytes(device) -> int:
    """CUDA memory this process may still allocate on ``device``: what is free on the GPU plus what its caching
    allocator holds unused, within the share set for the process (``set_per_process_memory_fraction``: a Ray
    worker packed onto a shared GPU)."""
    i = _cuda_index(device)  # torch's per-process fraction takes an index: 'cuda' alone raises (torch 2.11)
    free, total = torch.cuda.mem_get_info(i)
    allocated = torch.cuda.memory_allocated(i)
    share = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.6; the whole GPU before
    return int(min(free + torch.cuda.memory_reserved(i) - allocated, (share(i) if share else 1.0) * total - allocated))


__all__ = ["bf16_native", "cuda_free_bytes", "cuda_peak_bytes", "reset_cuda_peak", "resolve_device", "resolve_precision"]
