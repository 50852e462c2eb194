"""The one interface every model family implements: encode a 2D image once, decode prompts many times.

Coordinates: ``encode`` takes the model-grid image (square pixels) as uint8 [H, W] grey or [H, W, 3] RGB.
Points and boxes given to ``decode`` are pixel coordinates (x, y) of that image, boxes inclusive (x0, y0, x1, y1).
Low-resolution logits are the decoder's own output grid (256 x 256 for every family we support) and are what a
mask prompt takes back; ``upscale`` maps them to logits on the [H, W] image grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Embedding:
    """Encoder output for one image plus what decoding needs to map coordinates back.

    ``tensors`` hold the features (on the model's device); ``image_hw`` is the encoded image's (H, W);
    ``extra`` is family-specific, except ``extra["low_res_hw"]``, which every family sets: the (h, w) of the
    top-left part of the 256 x 256 low-resolution frame that the image occupies (the rest is padding).
    """

    tensors: dict[str, Any]
    image_hw: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = 0
        for value in self.tensors.values():
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


@dataclass
class Decoded:
    """Decoder output: ``low_res_logits`` float [C, 256, 256], ``iou`` float [C] predicted IoU per candidate."""

    low_res_logits: torch.Tensor
    iou: torch.Tensor

    def best(self) -> int:
        """Index of the candidate with the highest predicted IoU."""
        return int(torch.argmax(self.iou).item())


@dataclass(frozen=True)
class ModelCapabilities:
    points: bool = True
    boxes: bool = True
    mask_input: bool = True
    multimask: bool = True
    memory_propagation: bool = False


class SliceModel(ABC):
    """A loaded promptable 2D model on one device."""

    name: str = "?"
    capabilities: ModelCapabilities = ModelCapabilities()
    low_res_size: int = 256

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 on CPU, set by the caller
        # Set by backends.apply_backend (models.load_model): how the model runs, and the exported graphs that
        # replace torch parts ("image_encoder", "prompt_decoder"), each called with tensors, returning tensors.
        self.backend = "torch"
        self.precision = "fp32"
        self.runners: dict[str, Any] = {}

    @abstractmethod
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a uint8 image [H, W] or [H, W, 3] (model-grid, square pixels)."""

    @abstractmethod
    def decode(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        multimask: bool = False,
    ) -> Decoded:
        """Decode prompts in image pixel coordinates; ``mask_input`` is [1, 256, 256] low-res logits."""

    @abstractmethod
    def upscale(self, low_res_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-res logits [C, 256, 256] -> logits [C, H, W] on the encoded image's grid."""

    def mask_to_low_res(self, mask: np.ndarray, embedding: Embedding, magnitude: float = 8.0) -> torch.Tensor:
        """A binary mask on the encoded image's grid [H, W] -> mask-prompt logits [1, 256, 256] (+/- magnitude)."""
        lh, lw = embedding.extra["low_res_hw"]
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        t = torch.nn.functional.interpolate(t, size=(lh, lw), mode="bilinear", align_corners=False)
        out = torch.full((1, self.low_res_size, self.low_res_size), -magnitude)
        out[0, :lh, :lw] = (t[0, 0] >= 0.5).float() * (2 * magnitude) - magnitude
        return out.to(self.device)

    def export_graphs(self) -> dict[str, Any]:
        """The parts an exported runtime may run instead of torch: part name -> backends.graphs.GraphSpec."""
        return {}

    def torch_module(self) -> torch.nn.Module:
        """The whole torch network (its state dict keys exports of models built without a weights file)."""
        raise NotImplementedError

    def autocast(self):
        """Context manager for the configured autocast (no-op when none)."""
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> [H, W, 3] (grey repeated); [H, W, 3] passes through."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {image.shape}")
    return np.ascontiguousarray(image)
