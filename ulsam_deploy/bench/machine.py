"""The facts a report records about the machine it ran on (best effort: a missing fact is left out)."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def machine_info() -> dict:
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    from ulsam_deploy.backends.onnxrt.cpu import int8_capabilities

    info["int8"] = int8_capabilities().to_dict()
    try:
        from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

        driver = probe_cuda_driver()
        info["cuda_driver"] = driver.driver_version
        info["gpus"] = [g.to_dict() for g in driver.gpus]
    except Exception:  # noqa: BLE001 - machine facts are best effort
        info["gpus"] = []
    return info


def versions() -> dict:
    from ulsam_deploy.artifacts import tool_versions

    return tool_versions("numpy", "onnx", "onnxruntime", "torch", "tensorrt")


__all__ = ["machine_info", "versions"]
