"""The one CUDA path (ctypes on the driver API) against a stub libcuda compiled here (tests/stubs/libcuda.c).

The stub keeps "device" memory on the host and times events with CLOCK_MONOTONIC, so our real ctypes
code runs end to end: argument types, context handling, copies, events, cleanup, error sentences. It
says nothing about a real GPU.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from trt_bindings import Unavailable, libcuda_stub
from ulsam_deploy.backends.trt import cuda


@pytest.fixture(scope="module")
def stub():
    try:
        path = libcuda_stub()
    except Unavailable as exc:
        pytest.skip(str(exc))
    lib = ctypes.CDLL(str(path))
    lib.stub_live.restype = ctypes.c_long
    return path, lib


def test_probe_reports_the_stub_gpu(stub, monkeypatch):
    path, _ = stub
    info = cuda.probe_cuda_driver([str(path)])
    assert info.available and info.library == str(path) and info.driver_version == "12.6"
    (gpu,) = info.gpus
    assert (gpu.name, gpu.compute_capability, gpu.sm, gpu.integrated) == ("Stub GPU (host memory)", "8.7", "sm_87", True)
    assert gpu.total_memory_bytes == 8 << 30
    monkeypatch.setenv(cuda.LIBRARY_ENV, str(path))  # what every caller (doctor, sidecars, compat) then reads
    assert cuda.probe_cuda_driver().gpus == [gpu] and cuda.compute_capability(0) == 87


def test_probe_reasons(stub, monkeypatch):
    path, _ = stub
    missing = cuda.probe_cuda_driver(["/nonexistent/libcuda.so.1"])
    assert not missing.available and missing.error == "no NVIDIA driver (libcuda.so.1 not found)"
    monkeypatch.setenv("ULSAM_STUB_CUDA_DEVICES", "0")
    none = cuda.probe_cuda_driver([str(path)])
    assert not none.available and none.error == "the NVIDIA driver reports no GPU" and none.driver_version == "12.6"
    monkeypatch.setenv("ULSAM_STUB_CUDA_INIT", "100")
    broken = cuda.probe_cuda_driver([str(path)])
    assert not broken.available and broken.error == "cuInit failed: CUDA_ERROR_NO_DEVICE"
    not_cuda = cuda.probe_cuda_driver(["libm.so.6"])
    assert not not_cuda.available and "is not a usable CUDA driver" in not_cuda.error


def test_no_driver_is_one_sentence():
    with pytest.raises(cuda.CudaUnavailable) as err:
        cuda.open_cuda_memory(0, ["/nonexistent/libcuda.so.1"])
    assert str(err.value).startswith("No NVIDIA driver was found") and "\n" not in str(err.value)
    assert err.value.exit_code == 4


def test_memory_round_trip_events_and_cleanup(stub):
    path, lib = stub
    before = [lib.stub_live(i) for i in range(5)]
    memory = cuda.open_cuda_memory(0, [str(path)])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    host_in = memory.host_empty(x.shape, x.dtype)
    host_out = memory.host_empty(x.shape, x.dtype)
    assert host_in.ctypes.data != x.ctypes.data and host_in.shape == x.shape  # pinned buffers of our own
    dev = memory.device_empty(x.shape, np.float32)
    assert dev.nbytes == x.nbytes and memory.device_ptr(dev) == dev.ptr != 0
    np.copyto(host_in, x)
    first, second, total = _timed_round_trip(memory, host_in, host_out, dev)
    np.testing.assert_array_equal(host_out, x)
    assert first >= 0 and second >= 0 and total >= max(first, second)
    assert memory.stream_handle != 0
    assert [lib.stub_live(i) - b for i, b in enumerate(before)] == [1, 2, 3, 1, 1]
    memory.close()
    memory.close()  # twice is harmless
    assert [lib.stub_live(i) for i in range(5)] == before


def _timed_round_trip(memory, host_in, host_out, dev) -> tuple[float, float, float]:
    """host_in -> dev -> host_out on the memory's stream, timed by three events: (H2D ms, D2H ms, both ms)."""
    start, mid, end = memory.event(), memory.event(), memory.event()
    memory.record(start)
    memory.h2d(dev, host_in)
    memory.record(mid)
    memory.d2h(host_out, dev)
    memory.record(end)
    memory.synchronize()
    return memory.elapsed_ms(start, mid), memory.elapsed_ms(mid, end), memory.elapsed_ms(start, end)


def test_copy_into_a_smaller_buffer_is_refused(stub):
    path, _ = stub
    memory = cuda.open_cuda_memory(0, [str(path)])
    try:
        dev = memory.device_empty((2,), np.float32)
        with pytest.raises(ValueError, match="does not fit"):
            memory.h2d(dev, np.zeros(4, np.float32))
    finally:
        memory.close()


def test_driver_errors_are_one_sentence(stub, monkeypatch):
    path, _ = stub
    monkeypatch.setenv("ULSAM_STUB_CUDA_MEM_LIMIT", "1024")
    memory = cuda.open_cuda_memory(0, [str(path)])
    try:
        with pytest.raises(cuda.CudaError) as err:
            memory.device_empty((1024,), np.float32)
        assert str(err.value) == ("The CUDA driver call cuMemAlloc_v2 failed with CUDA_ERROR_OUT_OF_MEMORY; check "
                                  "'nvidia-smi' and free GPU memory.")
    finally:
        memory.close()
    with pytest.raises(cuda.CudaUnavailable, match=r"GPU 3 does not exist here \(1 found\); choose --device 0..0"):
        cuda.open_cuda_memory(3, [str(path)])
    monkeypatch.setenv("ULSAM_STUB_CUDA_INIT", "100")
    with pytest.raises(cuda.CudaUnavailable, match="GPU 0 is not usable .*cuInit failed with CUDA_ERROR_NO_DEVICE"):
        cuda.open_cuda_memory(0, [str(path)])


def test_calls_need_the_primary_context_current(stub):
    """The stub refuses work without a current context: ours makes the primary context current."""
    path, _ = stub
    driver = cuda.CudaDriver([str(path)])
    driver.call("cuInit", 0)
    driver.call("cuCtxSetCurrent", None)
    ptr = ctypes.c_uint64(0)
    with pytest.raises(cuda.CudaError, match="CUDA_ERROR_INVALID_CONTEXT"):
        driver.call("cuMemAlloc_v2", ctypes.byref(ptr), 16)
    memory = cuda.CudaMemory(0, driver)
    driver.call("cuCtxSetCurrent", None)  # e.g. another library switched contexts
    try:
        assert memory.device_empty((4,), np.float32).nbytes == 16
    finally:
        memory.close()


def test_another_thread_gets_the_context_made_current(stub):
    path, _ = stub
    memory = cuda.open_cuda_memory(0, [str(path)])
    host = memory.host_empty((8,), np.float32)
    dev = memory.device_empty((8,), np.float32)
    errors = _on_another_thread(lambda: memory.h2d(dev, host), memory)
    memory.close()
    assert errors == []


def _on_another_thread(copy, memory) -> list[Exception]:
    """Run ``copy`` and a synchronize on a new thread; what it raised."""
    import threading

    errors = []

    def work():
        try:
            copy()
            memory.synchronize()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return errors


@pytest.mark.gpu
def test_the_real_driver_round_trip_pinned_memory_stream_events_and_threads():
    """The same path on a real GPU (run by scripts/gpu_proof.py): 256 MiB through pinned memory both ways on our
    stream, events that time the copies, a copy from another thread, one-sentence errors, nothing left behind."""
    info = cuda.probe_cuda_driver()
    assert info.available and info.gpus, info.error
    gpu = info.gpus[0]
    assert "Stub" not in gpu.name, "the stub libcuda is loaded in this process: run this test on its own (-m gpu)"
    assert gpu.total_memory_bytes > 1 << 30 and int(gpu.sm.removeprefix("sm_")) >= 50
    assert cuda.compute_capability(0) == int(gpu.sm.removeprefix("sm_"))
    memory = cuda.open_cuda_memory(0)
    try:
        n = 64 << 20  # float32 elements: 256 MiB
        host_in = memory.host_empty((n,), np.float32)
        host_out = memory.host_empty((n,), np.float32)
        host_in[:] = np.arange(n, dtype=np.float32)
        dev = memory.device_empty((n,), np.float32)
        h2d_ms, d2h_ms, _ = _timed_round_trip(memory, host_in, host_out, dev)
        np.testing.assert_array_equal(host_out, host_in)
        gbs = 2 * n * 4 / ((h2d_ms + d2h_ms) / 1e3) / 1e9
        print(f"H2D {h2d_ms:.2f} ms, D2H {d2h_ms:.2f} ms ({gbs:.1f} GB/s average over pinned memory)")
        assert h2d_ms > 0 and d2h_ms > 0 and gbs > 1.0  # pinned copies over PCIe/NVLink, not pageable crawl

        host_out[:] = 0
        assert _on_another_thread(lambda: memory.d2h(host_out, dev), memory) == []
        assert np.array_equal(host_out, host_in)
        with pytest.raises(cuda.CudaError) as err:
            memory.device_empty((1 << 50,), np.float32)  # 4 PiB
        assert "CUDA_ERROR_OUT_OF_MEMORY" in str(err.value) and "\n" not in str(err.value)
    finally:
        memory.close()
    with pytest.raises(cuda.CudaUnavailable, match=r"GPU 99 does not exist here"):
        cuda.open_cuda_memory(99)
