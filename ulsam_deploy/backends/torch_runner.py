"""PyTorch eager runner: the reference by default."""

from __future__ import annotations

import numpy as np
import torch

from .base import Runner, RunnerUnavailable


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: int | None = None):
        self.model = model
        self.device = device
        self.threads = threads

    def load(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerUnavailable("PyTorch sees no CUDA device here; run the torch backend with --device cpu.")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = self.model.to(self.device).eval()

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        out = self.model(tensor)
        return out.float().cpu().numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "torch": torch.__version__,
                "threads": torch.get_num_threads()}
