"""Compiled inference for image backbones: the cost of indexing and of every uploaded query image.

A pretrained backbone in eager PyTorch runs EfficientNet-Lite0 at 35-50 images/s on 2 cores
(channels-last); OpenVINO compiles the same graph to about 145 images/s with outputs equal to
1e-5 (`bench/encode_bench.py`). Runtimes:

    "torch"          eager PyTorch (no compilation)
    "openvino"       OpenVINO on the CPU, fp32 (equal to eager within 1e-4)
    "openvino-bf16"  OpenVINO on the CPU in bfloat16 where the processor has it (faster; its
                     retrieval cost is measured in the bench, not assumed)

The compiled model is a snapshot of the weights: use it only for a frozen backbone or in eval mode.
Only EfficientNet-Lite towers are compiled (the ones tested and measured); others run eagerly.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from models.encoders.image_towers import BackboneTower

RUNTIMES = ("torch", "openvino", "openvino-bf16")
# The backbones whose compiled outputs are tested and measured against eager PyTorch; the others
# (ResNets, open_clip towers) run eagerly whatever the runtime says.
COMPILED_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class _PixelsToFeatures(nn.Module):
    """uint8 pixels -> normalised -> backbone features, as one graph (the runtime then does the
    scaling too, and no float copy of the batch is made in PyTorch first)."""

    def __init__(self, tower: BackboneTower):
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 255.0
        x = (x - self.tower.mean.view(1, 3, 1, 1)) / self.tower.std.view(1, 3, 1, 1)
        return self.tower.raw_features(x)


class OpenVINOBackbone:
    """A backbone compiled by OpenVINO for the CPU; called with uint8 (N, 3, S, S) pixels."""

    def __init__(self, tower: BackboneTower, image_size: int, precision: str = "f32"):
        try:
            import openvino as ov
        except ImportError as error:
            raise ValueError("the 'openvino' backbone runtime needs the openvino package "
                             "(pip install openvino), or use runtime 'torch'") from error
        example = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
        with torch.no_grad(), warnings.catch_warnings():
            # OpenVINO converts through torch.jit.trace, which warns that it is deprecated: that
            # is OpenVINO's business, and the warning only alarms whoever runs the indexer.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.trace")
            model = ov.convert_model(_PixelsToFeatures(tower).eval(), example_input=example)
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": precision}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.precision = precision
        # A compiled model's call reuses one inference request: serving threads take turns.
        self._lock = threading.Lock()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._lock:
            out = self.compiled(pixels.cpu().contiguous().numpy())[0]
            return torch.from_numpy(out.copy())


def compile_backbone(tower: BackboneTower, runtime: str, image_size: int
                     ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The compiled backbone for `runtime`, or None for eager PyTorch (and for a tower on a GPU,
    which runs eager: the runtimes here are CPU engines)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown backbone runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torch" or tower.mean.device.type != "cpu" or tower.backbone_name not in COMPILED_BACKBONES:
        return None
    return OpenVINOBackbone(tower, image_size, "bf16" if runtime == "openvino-bf16" else "f32")
