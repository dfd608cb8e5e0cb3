"""Resource bounds: estimate memory before allocating, refuse what cannot fit in one sentence."""

from __future__ import annotations

import os

# keep this share of the available memory for everything else (ONNX Runtime's own arenas, Python)
HEADROOM = 0.5
# bytes of activations per input byte a MobileNet forward needs, roughly (export, bench and profiling bound with it)
ACTIVATION_FACTOR = 64


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
        if largest < 1:
            raise UserError(f"Even one of the {what} needs about {_gib(int(bytes_each))} of memory, more than this "
                            f"machine can spare ({_gib(budget)}); use a smaller input size.")
        raise UserError(f"{count:,} {what} need about {_gib(need)} of memory, more than this machine can spare "
                        f"({_gib(budget)}); use {flag} {largest:,} or less.")
    return int(count)


def fit_weights(params: int, what: str, *, budget: int | None = None) -> None:
    """Refuse (ConfigError) a network whose weights cannot fit in memory, before any tensor is allocated.

    Counted twice: the network's own weights and a state dict being loaded into it."""
    from ulsam_deploy.errors import ConfigError

    budget = int((available_memory() if budget is None else budget) * HEADROOM)
    need = int(params) * 4 * 2
    if need > budget:
        raise ConfigError(f"{what} has about {int(params):,} weights ({_gib(need)} to build and load), more than this "
                          f"machine can spare ({_gib(budget)}); such a configuration is a damaged or foreign file, "
                          "or a typo in the flags.")


def fit_side(side: int, bytes_per_pixel: int, what: str, flag: str, *, budget: int | None = None) -> int:
    """``side`` when a ``side`` x ``side`` image costing ``bytes_per_pixel`` fits the memory budget, else a UserError
    giving the largest side that fits."""
    from ulsam_deploy.errors import UserError

    budget = int((available_memory() if budget is None else budget) * HEADROOM)
    need = int(side) ** 2 * max(int(bytes_per_pixel), 1)
    if need > budget:
        largest = int((budget // max(int(bytes_per_pixel), 1)) ** 0.5)
        raise UserError(f"{what} at {side}x{side} needs about {_gib(need)} of memory, more than this machine can spare "
                        f"({_gib(budget)}); use {flag} {largest} or less.")
    return int(side)


def require_memory(need: int, what: str, fix: str, *, budget: int | None = None) -> None:
    """A UserError when ``what`` (a phrase: 'Proving parity at 4096x4096') needs more than the memory budget."""
    from ulsam_deploy.errors import UserError

    budget = int((available_memory() if budget is None else budget) * HEADROOM)
    if int(need) > budget:
        raise UserError(f"{what} needs about {_gib(int(need))} of memory, more than this machine can spare "
                        f"({_gib(budget)}); {fix}.")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"


__all__ = ["available_memory", "fit_count", "fit_side", "fit_weights", "require_memory"]
