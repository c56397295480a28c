"""Which device each worker and rank uses, named as torch names them, and what runs there.

The accelerator is found as torch finds it (``torch.accelerator``): CUDA, XPU, MPS, or a
plugin's such as Gaudi's ``hpu``; none means CPUs. Worker ``i`` gets accelerator
``i mod n``; the ranks of a worker of several devices take the next ones after it. A
process group uses the device type's collective backend (NCCL for CUDA, XCCL for XPU,
HCCL for Gaudi, gloo on CPUs; for another plugin's type, the one it registers).
"""

from __future__ import annotations

import torch

__all__ = [
    "accelerator",
    "backend",
    "devices_for",
    "empty_cache",
    "rank_device",
    "synchronize",
]

# The collective backend of each device type torch knows (Gaudi's plugin registers HCCL
# when imported); another type (a plugin's) gets the one registered for it. Not looked up
# for these: a test helper torch may import (its "fake" group) registers itself for
# cpu, cuda and hpu.
_BACKENDS = {"cpu": "gloo", "mps": "gloo", "cuda": "nccl", "xpu": "xccl", "hpu": "hccl"}


def accelerator() -> tuple[str, int] | None:
    """This machine's accelerator type and device count, or None (CPUs only)."""
    found = torch.accelerator.current_accelerator(check_available=True)
    if found is None:
        return None
    n = torch.accelerator.device_count()
    return (found.type, n) if n > 0 else None


def devices_for(workers: int, found: tuple[str, int] | None) -> list[str]:
    """Worker ``i``'s device: ``<type>:<i mod n>`` with an accelerator, else ``cpu``."""
    if found is None:
        return ["cpu"] * workers
    kind, n = found
    return [f"{kind}:{i % n}" for i in range(workers)]


def rank_device(device: str, rank: int, count: int | None = None) -> str:
    """Rank ``rank``'s device in a worker whose rank 0 has ``device``: the same CPU, or
    the ``rank``-th accelerator after it (of ``count``, default: this machine's)."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return device
    n = max(1, count if count is not None else torch.accelerator.device_count())
    return f"{kind}:{(int(index or 0) + rank) % n}"


def backend(device: str) -> str:
    """The collective backend of a process group on ``device``'s type."""
    import torch.distributed as dist

    kind = device.partition(":")[0]
    if kind in _BACKENDS:
        return _BACKENDS[kind]
    try:
        found = str(dist.get_default_backend_for_device(kind))
    except (ValueError, RuntimeError):  # none registered
        return "gloo"
    return found if found != "fake" else "gloo"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings), a no-op on CPUs."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def empty_cache(device: torch.device) -> None:
    """Give the device's cached free memory back, a no-op on CPUs."""
    if device.type != "cpu":
        torch.accelerator.empty_cache()
