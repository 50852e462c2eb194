"""Our SAM 2 adapter (single image) against sam2's SAM2ImagePredictor on the same randomly initialised model.

SAM 2.1 Hiera-T is built with random weights by sam2's own ``build_sam2_video_predictor`` (what the adapter uses, so
one model serves images and propagation); the very same instance is wrapped by ``SAM2ImagePredictor``. Low-res
logits, IoU predictions and thresholded masks must agree. The 512 px MedSAM2 variant is checked the same way
against SAM2ImagePredictor with the feature sizes MedSAM2's fork computes from ``image_size``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from sam2.build_sam import build_sam2, build_sam2_video_predictor  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from SAMSegmentLib.models.base import Decoded  # noqa: E402
from SAMSegmentLib.models.sam2 import IMAGENET_MEAN, IMAGENET_STD, SAM2  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
CONFIG_512 = "configs/sam2.1/sam2.1_hiera_t512.yaml"
ATOL = 1e-4
H, W = 180, 240

POINTS = np.array([[120.0, 90.0], [40.5, 150.0]])
LABELS = np.array([1, 0])
BOX = np.array([60.0, 40.0, 200.0, 160.0])


def _image() -> np.ndarray:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    disc = ((yy - 90) ** 2 + (xx - 120) ** 2 < 50**2) * 120.0
    noise = rng.normal(0, 12, (H, W, 3))
    base = np.stack([xx * 0.5, yy * 0.8, (xx + yy) * 0.3], axis=-1)
    return np.clip(base + disc[..., None] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image()


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam2_video_predictor(CONFIG, ckpt_path=None, device="cpu")


@pytest.fixture(scope="module")
def pair(net, image):
    """(our adapter, its embedding, the reference predictor with the same image set): one encode each."""
    ours = SAM2(net, "cpu")
    emb = ours.encode(image)
    ref = SAM2ImagePredictor(net)
    ref.set_image(image)
    return ours, emb, ref


@pytest.fixture(scope="module")
def report():
    diffs: dict[str, float] = {}
    yield diffs
    print("\nmax |low-res logit difference| vs SAM2ImagePredictor:", {k: f"{v:.2e}" for k, v in diffs.items()})


def _check(ours: SAM2, emb, ref: SAM2ImagePredictor, report: dict, name: str, **kw) -> Decoded:
    mask_input = kw.pop("mask_input", None)
    multimask = kw.pop("multimask", False)
    dec = ours.decode(
        emb,
        points=kw.get("point_coords"),
        labels=kw.get("point_labels"),
        box=kw.get("box"),
        mask_input=mask_input,
        multimask=multimask,
    )
    ref_mask_input = None if mask_input is None else torch.as_tensor(mask_input).numpy()
    logits, iou, low = ref.predict(mask_input=ref_mask_input, multimask_output=multimask, return_logits=True, **kw)
    logits, iou, low = torch.as_tensor(logits), torch.as_tensor(iou), torch.as_tensor(low)
    assert dec.low_res_logits.shape == low.shape
    diff = (dec.low_res_logits - low).abs().max().item()
    report[name] = diff
    assert diff <= ATOL, f"{name}: low-res logits differ by {diff}"
    assert torch.allclose(dec.iou, iou, atol=1e-5, rtol=0), f"{name}: IoU {dec.iou} vs {iou}"

    up = ours.upscale(dec.low_res_logits, emb)
    assert up.shape == logits.shape == (dec.low_res_logits.shape[0], *emb.image_hw)
    differ = (up > 0) != (logits > 0)
    # the reference upscales unclamped logits; ours come from the clamped ones: equal signs except at |logit| ~ 0
    assert int(differ.sum()) <= 5, f"{name}: {int(differ.sum())} mask pixels differ"
    assert bool((logits[differ].abs() < ATOL).all()), f"{name}: a differing pixel is not on the boundary"
    return dec


def test_embedding_equals_sam2_image_predictor(pair) -> None:
    ours, emb, ref = pair
    assert emb.image_hw == (H, W) and emb.extra["low_res_hw"] == (256, 256)
    feats = emb.tensors
    assert (feats["image_embed"] - ref._features["image_embed"]).abs().max().item() <= ATOL
    assert len(feats["high_res_feats"]) == len(ref._features["high_res_feats"]) == 2
    for a, b in zip(feats["high_res_feats"], ref._features["high_res_feats"], strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= ATOL
    assert ours.sam2_model is ref.model


@pytest.mark.parametrize("multimask", [False, True])
def test_points_box_and_both(pair, report, multimask: bool) -> None:
    ours, emb, ref = pair
    tag = "multi" if multimask else "single"
    a = _check(ours, emb, ref, report, f"points/{tag}", point_coords=POINTS, point_labels=LABELS, multimask=multimask)
    b = _check(ours, emb, ref, report, f"box/{tag}", box=BOX, multimask=multimask)
    both = {"box": BOX, "point_coords": POINTS, "point_labels": LABELS}
    _check(ours, emb, ref, report, f"box+points/{tag}", multimask=multimask, **both)
    assert not torch.allclose(a.low_res_logits, b.low_res_logits)  # prompts matter even with random weights


def test_mask_input_and_cached_embedding(pair, report) -> None:
    ours, emb, ref = pair
    first = _check(ours, emb, ref, report, "first", point_coords=POINTS[:1], point_labels=LABELS[:1], multimask=True)
    prev = first.low_res_logits[first.best()][None]
    _check(ours, emb, ref, report, "mask_input", point_coords=POINTS, point_labels=LABELS, mask_input=prev)
    again = ours.decode(emb, POINTS, LABELS, mask_input=prev)
    twice = ours.decode(emb, POINTS, LABELS, mask_input=prev)
    assert torch.equal(again.low_res_logits, twice.low_res_logits)
    m = ours.mask_to_low_res(np.ones((H, W), bool), emb)
    assert m.shape == (1, 256, 256) and bool((m > 0).all())
    _check(ours, emb, ref, report, "binary_mask_input", box=BOX, mask_input=m)


def test_image_path_same_as_build_sam2(net, pair) -> None:
    """The video-predictor build flags leave the image path alone: build_sam2's model decodes identically."""
    ours, emb, ref = pair
    image_net = build_sam2(CONFIG, ckpt_path=None, device="cpu")
    image_net.load_state_dict(net.state_dict())
    other = SAM2ImagePredictor(image_net)
    other._features, other._orig_hw, other._is_image_set = ref._features, ref._orig_hw, True
    _, iou, low = other.predict(POINTS[:1], LABELS[:1], BOX, multimask_output=False)
    dec = ours.decode(emb, POINTS[:1], LABELS[:1], BOX)
    assert (dec.low_res_logits - torch.as_tensor(low)).abs().max().item() <= ATOL
    assert torch.allclose(dec.iou, torch.as_tensor(iou), atol=1e-5, rtol=0)


def test_medsam2_512_variant(image) -> None:
    """MedSAM2's 512 px config: low-res frame 128 x 128; matches SAM2ImagePredictor with 512-px feature sizes."""
    torch.manual_seed(1)
    model = SAM2.load(CONFIG_512, random_init=True)
    assert model.image_size == 512 and model.low_res_size == 128 and model.resize == "pil_bicubic"

    ours = SAM2(model.sam2_model, "cpu", resize="sam2")  # same model, SAM2Transforms, to compare with sam2
    emb = ours.encode(image)
    ref = SAM2ImagePredictor(model.sam2_model)
    ref._bb_feat_sizes = [(128, 128), (64, 64), (32, 32)]  # what MedSAM2's fork derives from image_size
    ref.set_image(image)
    report: dict[str, float] = {}
    dec = _check(ours, emb, ref, report, "512/box+points", box=BOX, point_coords=POINTS, point_labels=LABELS)
    assert dec.low_res_logits.shape == (1, 128, 128) and emb.extra["low_res_hw"] == (128, 128)
    m = ours.mask_to_low_res(np.ones((H, W), bool), emb)
    _check(ours, emb, ref, report, "512/mask_input", box=BOX, mask_input=m)


def test_medsam2_pil_preprocessing(image) -> None:
    """MedSAM2's 3D scripts: PIL resize (bicubic default) to 512, / 255, ImageNet mean/std."""
    from PIL import Image

    torch.manual_seed(1)
    model = SAM2.load(CONFIG_512, random_init=True)
    x = model._preprocess(image)
    ref = np.asarray(Image.fromarray(image).resize((512, 512))).transpose(2, 0, 1) / 255.0
    ref = (torch.from_numpy(ref) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    assert x.shape == (1, 3, 512, 512) and (x[0].double() - ref).abs().max().item() < 1e-5


def test_load_model_builds_with_random_weights() -> None:
    from SAMSegmentLib.models import load_model

    model = load_model("sam2.1_hiera_tiny", device="cpu", random_init=True, backend="torch")
    assert isinstance(model, SAM2) and model.capabilities.memory_propagation
    assert type(model.sam2_model).__name__ == "SAM2VideoPredictor"
