"""Test doubles. BoxModel is a SliceModel that segments exactly the box it is given (no learning involved).

It lets geometry tests check that a prompt around a known object comes back on exactly the right voxels,
and counts encoder calls for cache tests.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from SAMSegmentLib.models.base import Decoded, Embedding, ModelCapabilities, SliceModel


class BoxModel(SliceModel):
    """Returns logits = signed distance (model pixels) to the prompt box; points add a 3-pixel disc each."""

    name = "box-double"
    capabilities = ModelCapabilities()

    def __init__(self, encode_delay: float = 0.0) -> None:
        super().__init__("cpu")
        self.encode_calls = 0
        self.encode_threads: set[str] = set()
        self.decode_threads: set[str] = set()
        self.encode_delay = encode_delay

    def encode(self, image: np.ndarray) -> Embedding:
        import time

        self.encode_calls += 1
        self.encode_threads.add(threading.current_thread().name)
        if self.encode_delay:
            time.sleep(self.encode_delay)
        h, w = image.shape[:2]
        t = torch.from_numpy(np.asarray(image, dtype=np.float32)).reshape(1, h, w)
        return Embedding({"image": t}, (h, w), {"low_res_hw": (256, 256)})

    def decode(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=False) -> Decoded:
        self.decode_threads.add(threading.current_thread().name)
        h, w = embedding.image_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        field = np.full((h, w), -5.0, dtype=np.float32)
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, dtype=np.float32)
            field = np.minimum.reduce([xs - (x0 - 0.5), (x1 + 0.5) - xs, ys - (y0 - 0.5), (y1 + 0.5) - ys])
        if points is not None:
            for (px, py), lab in zip(np.asarray(points), np.asarray(labels), strict=True):
                disc = 3.0 - np.hypot(xs - px, ys - py)
                field = np.maximum(field, disc) if lab == 1 else np.minimum(field, -disc)
        # store the full-resolution field in the "low-res" slot: upscale() returns it unchanged
        t = torch.from_numpy(field)[None]
        return Decoded(t, torch.tensor([0.9]))

    def upscale(self, low_res_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        return low_res_logits


class ThresholdModel(BoxModel):
    """Segments the bright pixels (grey > 127) inside the prompt box: a stand-in that follows image content,
    so chaining sees a real object end. Counts decode calls per encoded image."""

    name = "threshold-double"

    def __init__(self, encode_delay: float = 0.0) -> None:
        super().__init__(encode_delay)
        self.decode_calls = 0

    def decode(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=False) -> Decoded:
        self.decode_calls += 1
        inside = super().decode(embedding, points, labels, box, mask_input, multimask).low_res_logits[0] > 0
        bright = embedding.tensors["image"][0] > 127
        field = torch.where(inside & bright, torch.tensor(1.0), torch.tensor(-1.0))
        return Decoded(field[None], torch.tensor([0.9]))
