"""SAM 2 / SAM 2.1 and MedSAM2 (sam2 package): single-image prediction on one SAM2VideoPredictor.

One model object (``self.sam2_model``, a ``SAM2VideoPredictor``, which is a ``SAM2Base``) serves both the
single-slice path here and memory propagation elsewhere, so it is built with ``build_sam2_video_predictor``. The
image path reproduces ``sam2.sam2_image_predictor.SAM2ImagePredictor``: ``SAM2Transforms`` (resize to S x S without
keeping the aspect ratio, ImageNet mean/std), backbone features with ``no_mem_embed`` added when
``directly_add_no_mem_embed``, the two high-resolution feature levels for the decoder, points/boxes divided by the
image (W, H) and multiplied by S, a box sent as two points labelled 2 and 3 ahead of the clicks, and low-resolution
logits clamped to [-32, 32]. The video predictor's extra build settings (binarised memory masks, hole filling)
only change the video path; the image decoder settings (dynamic multimask via stability) are the same ones
``build_sam2`` applies.

S is the config's ``image_size``: 1024 for Meta's SAM 2.1 configs, so the low-resolution frame is 256 x 256 and
the image fills it (``low_res_hw`` = (256, 256)). MedSAM2 (bowang-lab/MedSAM2) runs SAM 2.1 Hiera-T at S = 512
(its ``sam2/configs/sam2.1_hiera_t512.yaml``: ``image_size: 512`` and memory-attention RoPE ``feat_sizes: [32, 32]``,
otherwise identical to ``sam2.1_hiera_t.yaml``; the default of ``medsam2_infer_3D_CT.py`` and
``medsam2_infer_video.py``). The sam2 pip package does not ship that file, so the variant
``configs/sam2.1/sam2.1_hiera_t512.yaml`` is built here from the 1024 config plus hydra overrides; its low-resolution
frame is 128 x 128 (``low_res_size`` = S / 4). MedSAM2's 3D inference resizes slices with PIL's bicubic
``Image.resize`` (then /255 and ImageNet mean/std), which that variant uses instead of ``SAM2Transforms``.

Coordinates in this module's public API are pixel (x, y) of the encoded image, boxes (x0, y0, x1, y1).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor  # importing sam2 also initialises its hydra configs
from sam2.utils.transforms import SAM2Transforms

from .base import Decoded, Embedding, ModelCapabilities, SliceModel, to_rgb
from .checkpoints import load_state_dict

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOGIT_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns (and feeds back) to +/- 32
RESIZE_MODES = ("sam2", "pil_bicubic")


def image_size_overrides(size: int) -> tuple[str, ...]:
    """Hydra overrides that run a Meta SAM 2.1 config at ``size`` px (RoPE grids follow the 16x-stride features)."""
    grid = size // 16
    return (
        f"++model.image_size={size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
    )


@dataclass(frozen=True)
class Sam2Variant:
    """How to build one registry variant: hydra ``config`` + ``overrides``, and the image ``resize`` mode."""

    config: str
    overrides: tuple[str, ...] = ()
    resize: str = "sam2"  # "sam2": SAM2Transforms (torch bilinear, antialiased); "pil_bicubic": MedSAM2 scripts


# Variants that are not a config file of the sam2 package. Any other variant string is used as the config name.
VARIANTS: dict[str, Sam2Variant] = {
    "configs/sam2.1/sam2.1_hiera_t512.yaml": Sam2Variant(
        "configs/sam2.1/sam2.1_hiera_t.yaml", image_size_overrides(512), resize="pil_bicubic"
    ),
}


def resolve_variant(variant: str) -> Sam2Variant:
    """Registry variant -> build recipe (plain sam2 config names pass through)."""
    return VARIANTS.get(variant) or Sam2Variant(variant)


class SAM2(SliceModel):
    """A sam2 ``SAM2Base`` (normally a ``SAM2VideoPredictor``) behind the SliceModel interface."""

    capabilities = ModelCapabilities(points=True, boxes=True, mask_input=True, multimask=True, memory_propagation=True)

    def __init__(self, sam2_model: torch.nn.Module, device: torch.device | str = "cpu", resize: str = "sam2") -> None:
        super().__init__(device)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.sam2_model = sam2_model.to(self.device).eval()
        self.image_size = int(self.sam2_model.image_size)
        self.low_res_size = 4 * int(self.sam2_model.sam_image_embedding_size)
        self.resize = resize
        with warnings.catch_warnings():  # SAM2Transforms uses torch.jit.script, deprecated in recent torch
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            self._transforms = SAM2Transforms(resolution=self.image_size, mask_threshold=0.0)

    @classmethod
    def load(
        cls,
        variant: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        weights: str | Path | None = None,
        device: torch.device | str = "cpu",
        random_init: bool = False,
    ) -> SAM2:
        """Build with ``build_sam2_video_predictor`` (random weights when ``random_init``), then load ``weights``."""
        recipe = resolve_variant(variant)
        net = build_sam2_video_predictor(
            recipe.config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(recipe.overrides)
        )
        if not random_init:
            if weights is None:
                raise ValueError(f"SAM 2 model {variant} needs a weights file")
            missing, unexpected = net.load_state_dict(load_state_dict(weights), strict=False)
            if missing or unexpected:
                raise RuntimeError(
                    f"the weights file {weights} does not match {variant} "
                    f"(missing {len(missing)} tensors, e.g. {missing[:3]}; unexpected {len(unexpected)}, "
                    f"e.g. {unexpected[:3]})"
                )
            log.info("loaded SAM 2 %s weights from %s", variant, weights)
        return cls(net, device, resize=recipe.resize)

    # ----------------------------------------------------------------- geometry
    def _preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> normalised float [1, 3, S, S] on the model's device."""
        if self.resize == "sam2":
            x = self._transforms(rgb)  # ToTensor, Resize((S, S)), Normalize
        else:
            resized = Image.fromarray(rgb).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
            mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
            std = torch.tensor(IMAGENET_STD)[:, None, None]
            x = (x - mean) / std
        return x[None].to(self.device)

    def _transform_xy(self, xy: np.ndarray, emb: Embedding) -> torch.Tensor:
        """Image pixel (x, y) [..., 2] -> model-input pixel (x, y): divide by (W, H), times S (float32, as sam2)."""
        h, w = emb.image_hw
        t = torch.as_tensor(np.asarray(xy), dtype=torch.float, device=self.device).clone()
        t[..., 0] = t[..., 0] / w
        t[..., 1] = t[..., 1] / h
        return t * self.image_size

    # ----------------------------------------------------------------- interface
    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a uint8 image [H, W] or [H, W, 3]: ``image_embed`` [1, 256, S/16, S/16] and two high-res levels."""
        rgb = to_rgb(image)
        h, w = rgb.shape[:2]
        m = self.sam2_model
        x = self._preprocess(rgb)
        with self.autocast():
            backbone_out = self.forward_image(x)
            _, vision_feats, _, feat_sizes = m._prepare_backbone_features(backbone_out)
            if m.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + m.no_mem_embed
        # [HW, 1, C] -> [1, C, H, W], high resolution first
        feats = [
            f.permute(1, 2, 0).reshape(1, -1, fh, fw).float()
            for f, (fh, fw) in zip(vision_feats, feat_sizes, strict=True)
        ]
        return Embedding(
            {"image_embed": feats[-1], "high_res_feats": feats[:-1]},
            (h, w),
            {"low_res_hw": (self.low_res_size, self.low_res_size), "image_size": self.image_size},
        )

    def forward_image(self, x: torch.Tensor) -> dict[str, Any]:
        """``SAM2Base.forward_image`` on a normalised batch [1, 3, S, S], through the exported graph when there is one
        (memory propagation calls this too)."""
        runner = self.runners.get("image_encoder")
        if runner is None:
            return self.sam2_model.forward_image(x)
        from ..backends.graphs import sam2_backbone_out

        return sam2_backbone_out(self.sam2_model, [t.to(self.device) for t in runner(x)])

    def export_graphs(self) -> dict:
        from ..backends.graphs import sam2_image_encoder_spec

        return {"image_encoder": sam2_image_encoder_spec(self.sam2_model)}

    def torch_module(self) -> torch.nn.Module:
        return self.sam2_model

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
        """Points (x, y) [N, 2] with labels [N] (1 include, 0 exclude), box (x0, y0, x1, y1), mask [1, S/4, S/4]."""
        coords: list[torch.Tensor] = []
        point_labels: list[torch.Tensor] = []
        if box is not None:  # a box is two corner points labelled 2, 3, placed before the clicks
            coords.append(self._transform_xy(np.asarray(box).reshape(1, 2, 2), embedding))
            point_labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=self.device))
        if points is not None and len(points):
            if labels is None or len(labels) != len(points):
                raise ValueError("every point needs a label (1 include, 0 exclude)")
            coords.append(self._transform_xy(np.asarray(points).reshape(1, -1, 2), embedding))
            point_labels.append(torch.as_tensor(np.asarray(labels), dtype=torch.int, device=self.device).reshape(1, -1))
        point_arg = (torch.cat(coords, dim=1), torch.cat(point_labels, dim=1)) if coords else None
        mask_arg = None
        if mask_input is not None:
            s = self.low_res_size
            mask_arg = torch.as_tensor(mask_input, dtype=torch.float, device=self.device).reshape(1, 1, s, s)

        m = self.sam2_model
        feats = embedding.tensors
        with self.autocast():
            sparse, dense = m.sam_prompt_encoder(points=point_arg, boxes=None, masks=mask_arg)
            low_res, iou, _, _ = m.sam_mask_decoder(
                image_embeddings=feats["image_embed"],
                image_pe=m.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=False,
                high_res_features=list(feats["high_res_feats"]),
            )
        low_res = torch.clamp(low_res[0].float(), -LOGIT_CLAMP, LOGIT_CLAMP)
        return Decoded(low_res, iou[0].float())

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-res logits [C, S/4, S/4] -> logits [C, H, W] (bilinear, as SAM2Transforms.postprocess_masks)."""
        x = low_res_logits.to(self.device, torch.float32)[None]
        return F.interpolate(x, embedding.image_hw, mode="bilinear", align_corners=False)[0]


def load(spec: Any, weights: str | Path | None, device: str, random_init: bool = False) -> SAM2:
    """Family entry point used by the model loader (``spec.variant``: a sam2 config name or a VARIANTS key)."""
    return SAM2.load(spec.variant, weights, device, random_init=random_init)
