"""PyTorch eager runner: the reference by default (fp32, eval mode, CPU or CUDA)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ulsam_deploy.backends.base import Runner, RunnerUnavailable


def _outputs(out) -> tuple:
    """A model's outputs as a tuple (a backbone returns several feature maps, a classifier one tensor)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: int | None = None):
        self.model = model
        self.device = device
        self.threads = threads
        self._stages: dict | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                        **overrides) -> "TorchRunner":
        from ulsam_deploy.models.checkpoint import load_checkpoint_with_info

        model, _ = load_checkpoint_with_info(checkpoint, **overrides)
        return cls(model, device, threads)

    @property
    def label(self) -> str:
        return f"torch:{self.device.split(':')[0]}"

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def load(self) -> None:
        if self.cuda and not torch.cuda.is_available():
            raise RunnerUnavailable("PyTorch sees no CUDA device here; run the torch backend with --device cpu.")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = self.model.to(self.device).eval()

    @torch.inference_mode()
    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return [o.float().cpu().numpy() for o in _outputs(self.model(tensor))]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_all(batch)[0]

    def prepare(self, batch: np.ndarray):
        model = self.model
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if not self.cuda:
            def run():
                with torch.inference_mode():
                    return model(host)
            return run, None
        # CUDA: pinned host buffers and events around each stage, the way trtexec splits its latency
        host = host.pin_memory()
        device_in = torch.empty_like(host, device=self.device)
        with torch.inference_mode():
            shapes = [o.shape for o in _outputs(model(device_in.copy_(host)))]
        host_outs = [torch.empty(shape, dtype=torch.float32).pin_memory() for shape in shapes]
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        stream = torch.cuda.current_stream(self.device)

        def run():
            with torch.inference_mode():
                events[0].record(stream)
                device_in.copy_(host, non_blocking=True)
                events[1].record(stream)
                outs = _outputs(model(device_in))
                events[2].record(stream)
                for host_out, out in zip(host_outs, outs):
                    host_out.copy_(out, non_blocking=True)
                events[3].record(stream)
                events[3].synchronize()
            return host_outs

        def stages():
            return {"h2d": events[0].elapsed_time(events[1]), "compute": events[1].elapsed_time(events[2]),
                    "d2h": events[2].elapsed_time(events[3])}

        return run, stages

    def describe(self) -> dict:
        info = {"backend": self.name, "label": self.label, "device": self.device, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "precision": self.precision, "mode": "eager, eval, inference_mode"}
        if self.cuda and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info
