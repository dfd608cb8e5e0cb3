"""Resource bounds: estimate memory before allocating, refuse what cannot fit in one sentence."""

from __future__ import annotations

import os

# keep this share of the available memory for everything else (ONNX Runtime's own arenas, Python)
HEADROOM = 0.5


def available_memory() -> int:
    """Bytes the kernel reports as available (MemAvailable), else physical memory; 8 GiB when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def fit_count(count: int, bytes_each: int, what: str, flag: str, *, budget: int | None = None) -> int:
    """``count`` when ``count * bytes_each`` fits the memory budget, else a UserError giving the largest that fits."""
    from ulsam_deploy.errors import UserError

    budget = int((available_memory() if budget is None else budget) * HEADROOM)
    need = int(count) * max(int(bytes_each), 1)
    if need > budget:
        largest = max(budget // max(int(bytes_each), 1), 0)
        raise UserError(f"{count:,} {what} need about {_gib(need)} of memory, more than this machine can spare "
                        f"({_gib(budget)}); use {flag} {largest:,} or less.")
    return int(count)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"


__all__ = ["available_memory", "fit_count"]
