"""SAM (segment-anything ViT-B/L/H) and MedSAM (SAM ViT-B fine-tuned on medical images) at 1024 px.

Plain SAM reproduces ``segment_anything.SamPredictor``: the uint8 image is resized (PIL, bilinear) so that its
longest side is 1024 (``ResizeLongestSide``), normalised by the model's pixel mean/std and padded bottom/right to
1024 x 1024. Points and boxes scale by the same factors (``apply_coords`` / ``apply_boxes``). The decoder's
256 x 256 low-resolution logits cover the padded 1024 frame; ``upscale`` does what ``Sam.postprocess_masks`` does
(256 -> 1024, crop the padding, resize to the image grid).

MedSAM follows its own inference script (bowang-lab/MedSAM ``MedSAM_Inference.py``): the image is resized to
1024 x 1024 without keeping the aspect ratio (skimage ``resize(order=3, preserve_range=True, anti_aliasing=True)``,
then ``astype(uint8)``), scaled to [0, 1] by its min and max, and fed to the image encoder with no mean/std
normalisation and no padding. Boxes scale by 1024 / W and 1024 / H. The low-resolution logits cover the whole
image, and are resized straight to (H, W). skimage is not a dependency here, so the resize uses torch's bicubic
kernel (anti-aliased when shrinking) clipped to the input range: close to, not bit-equal with, skimage's cubic spline.

Coordinates everywhere in this module's public API are pixel (x, y) of the encoded image, boxes (x0, y0, x1, y1).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide

from .base import Decoded, Embedding, ModelCapabilities, SliceModel, to_rgb
from .checkpoints import load_state_dict

log = logging.getLogger(__name__)

IMAGE_SIZE = 1024
LOW_RES_SIZE = 256
MEDSAM_SUFFIX = "_medsam"


def medsam_preprocess(rgb: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """MedSAM's input: uint8 RGB [H, W, 3] -> float [1, 3, size, size] in [0, 1] (no aspect keeping).

    Mirrors ``MedSAM_Inference.py``: cubic resize within the input's range, truncation to uint8, then min-max
    scaling over the whole resized image.
    """
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    h, w = t.shape[-2:]
    lo, hi = float(t.min()), float(t.max())
    shrinking = h > size or w > size
    t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=shrinking)
    t = torch.floor(t.clamp(lo, hi))  # skimage clips to the input range; astype(uint8) truncates
    t_lo, t_hi = t.min(), t.max()
    return (t - t_lo) / torch.clamp(t_hi - t_lo, min=1e-8)


class SAM(SliceModel):
    """segment-anything ``Sam`` behind the SliceModel interface; ``medsam=True`` uses MedSAM's preprocessing."""

    capabilities = ModelCapabilities(points=True, boxes=True, mask_input=True, multimask=True)

    def __init__(self, sam_model: torch.nn.Module, device: torch.device | str = "cpu", medsam: bool = False) -> None:
        super().__init__(device)
        self.sam = sam_model.to(self.device).eval()
        self.medsam = medsam
        self.image_size = int(self.sam.image_encoder.img_size)
        self.low_res_size = 4 * int(self.sam.prompt_encoder.image_embedding_size[0])
        self._resize = ResizeLongestSide(self.image_size)

    @classmethod
    def load(
        cls,
        variant: str = "vit_b",
        weights: str | Path | None = None,
        device: torch.device | str = "cpu",
        random_init: bool = False,
    ) -> SAM:
        """Build ``variant`` (``vit_b``, ``vit_l``, ``vit_h`` or ``vit_b_medsam``) with segment-anything's builders."""
        medsam = variant.endswith(MEDSAM_SUFFIX)
        arch = variant[: -len(MEDSAM_SUFFIX)] if medsam else variant
        if arch not in sam_model_registry:
            raise ValueError(f"unknown SAM variant {variant!r}; expected one of vit_b, vit_l, vit_h, vit_b_medsam")
        net = sam_model_registry[arch](checkpoint=None)
        if not random_init:
            if weights is None:
                raise ValueError(f"SAM {variant} needs a weights file")
            net.load_state_dict(load_state_dict(weights), strict=True)
            log.info("loaded SAM %s weights from %s", variant, weights)
        return cls(net, device, medsam=medsam)

    # ----------------------------------------------------------------- geometry
    def _input_hw(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') of the image inside the model's square input frame."""
        if self.medsam:
            return self.image_size, self.image_size
        nh, nw = self._resize.get_preprocess_shape(h, w, self.image_size)
        return nh, nw

    def _transform_xy(self, xy: np.ndarray, emb: Embedding) -> np.ndarray:
        """Image pixel (x, y) [..., 2] -> model-input pixel (x, y), float64 like SamPredictor."""
        xy = np.asarray(xy, dtype=np.float64)
        if not self.medsam:
            return self._resize.apply_coords(xy, emb.image_hw)
        h, w = emb.image_hw
        out = xy.copy()
        out[..., 0] = out[..., 0] / w * self.image_size
        out[..., 1] = out[..., 1] / h * self.image_size
        return out

    # ----------------------------------------------------------------- interface
    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a uint8 image [H, W] or [H, W, 3]; returns features [1, 256, 64, 64]."""
        rgb = to_rgb(image)
        h, w = rgb.shape[:2]
        if self.medsam:
            x = medsam_preprocess(rgb, self.image_size).to(self.device)
        else:
            resized = self._resize.apply_image(rgb)  # uint8 [h', w', 3], PIL bilinear
            t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
            x = self.sam.preprocess(t)  # (x - mean) / std, pad to 1024 x 1024
        input_hw = self._input_hw(h, w)
        low_res_hw = (
            math.ceil(input_hw[0] * self.low_res_size / self.image_size),
            math.ceil(input_hw[1] * self.low_res_size / self.image_size),
        )
        runner = self.runners.get("image_encoder")
        if runner is not None:
            features = runner(x)[0].to(self.device)
        else:
            with self.autocast():
                features = self.sam.image_encoder(x)
        return Embedding(
            {"image_embed": features.float()},
            (h, w),
            {"input_hw": input_hw, "low_res_hw": low_res_hw, "medsam": self.medsam},
        )

    @torch.inference_mode()
    def decode(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        multimask: bool = False,
    ) -> Decoded:
        """Points (x, y) [N, 2] with labels [N] (1 include, 0 exclude), box (x0, y0, x1, y1), mask [1, 256, 256]."""
        if "prompt_decoder" in self.runners:
            return self._decode_exported(embedding, points, labels, box, mask_input, multimask)
        point_arg = None
        if points is not None and len(points):
            if labels is None or len(labels) != len(points):
                raise ValueError("every point needs a label (1 include, 0 exclude)")
            coords = self._transform_xy(np.asarray(points).reshape(-1, 2), embedding)
            point_arg = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device)[None],
                torch.as_tensor(np.asarray(labels), dtype=torch.int, device=self.device).reshape(1, -1),
            )
        box_arg = None
        if box is not None:
            b = self._transform_xy(np.asarray(box).reshape(1, 2, 2), embedding).reshape(1, 4)
            box_arg = torch.as_tensor(b, dtype=torch.float, device=self.device)
        mask_arg = None
        if mask_input is not None:
            s = self.low_res_size
            mask_arg = torch.as_tensor(mask_input, dtype=torch.float, device=self.device).reshape(1, 1, s, s)
        pe = self.sam.prompt_encoder
        with self.autocast():
            sparse, dense = pe(points=point_arg, boxes=box_arg, masks=mask_arg)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=embedding.tensors["image_embed"],
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        return Decoded(low_res[0].float(), iou[0].float())

    def _decode_exported(self, embedding, points, labels, box, mask_input, multimask) -> Decoded:
        from ..backends.graphs import run_sam_prompt_decoder

        pts = None
        if points is not None and len(points):
            if labels is None or len(labels) != len(points):
                raise ValueError("every point needs a label (1 include, 0 exclude)")
            pts = self._transform_xy(np.asarray(points).reshape(-1, 2), embedding)
        b = self._transform_xy(np.asarray(box).reshape(2, 2), embedding) if box is not None else None
        low_res, iou = run_sam_prompt_decoder(self.runners, self.sam.prompt_encoder,
                                              embedding.tensors["image_embed"], pts, labels, b, mask_input, multimask)
        return Decoded(low_res.to(self.device), iou.to(self.device))

    def export_graphs(self) -> dict:
        from ..backends.graphs import image_encoder_spec, sam_prompt_decoder_specs

        return {
            "image_encoder": image_encoder_spec(self.sam.image_encoder, self.image_size),
            **sam_prompt_decoder_specs(self.sam.prompt_encoder, self.sam.mask_decoder),
        }

    def torch_module(self) -> torch.nn.Module:
        return self.sam

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-res logits [C, 256, 256] -> logits [C, H, W] (SamPredictor's postprocess; MedSAM: direct resize)."""
        x = low_res_logits.to(self.device, torch.float32)[None]
        if not self.medsam:
            x = F.interpolate(x, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
            ih, iw = embedding.extra["input_hw"]
            x = x[..., :ih, :iw]
        return F.interpolate(x, embedding.image_hw, mode="bilinear", align_corners=False)[0]


def load(spec: Any, weights: str | Path | None, device: str, random_init: bool = False) -> SAM:
    """Family entry point used by the model loader (``spec.variant``: vit_b, vit_l, vit_h, vit_b_medsam)."""
    return SAM.load(spec.variant, weights, device, random_init=random_init)
