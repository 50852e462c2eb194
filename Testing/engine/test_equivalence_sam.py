"""Our SAM / MedSAM adapter against segment_anything's SamPredictor (and MedSAM's inference recipe).

A randomly initialised SAM ViT-B from segment-anything's own builder is wrapped twice, by our adapter and by
``SamPredictor``; both must give the same low-resolution logits, IoU predictions and thresholded masks.
For speed on CPU the image encoder keeps two of its twelve blocks (one windowed, one global attention): the test
is about preprocessing, prompt transforms and decoding, which do not depend on the encoder's depth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("segment_anything")

from segment_anything import SamPredictor, sam_model_registry  # noqa: E402

from SAMSegmentLib.models.base import Decoded  # noqa: E402
from SAMSegmentLib.models.sam import SAM, medsam_preprocess  # noqa: E402

ATOL = 1e-4
H, W = 180, 240  # non-square on purpose: exercises the longest-side resize and the padding crop

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
def sam_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = sam_model_registry["vit_b"]()
    enc = net.image_encoder
    enc.blocks = torch.nn.ModuleList([enc.blocks[1], enc.blocks[2]])  # block 2 is a global-attention block
    return net.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image()


@pytest.fixture(scope="module")
def pair(sam_net, image):
    """(our adapter, its embedding, the reference predictor with the same image set): one encode each."""
    ours = SAM(sam_net, "cpu")
    emb = ours.encode(image)
    ref = SamPredictor(sam_net)
    ref.set_image(image)
    return ours, emb, ref


def _ref(ref: SamPredictor, **kw):
    """Reference (logits [C, H, W], iou [C], low-res [C, 256, 256]) as tensors."""
    logits, iou, low = ref.predict(return_logits=True, **kw)
    return torch.as_tensor(logits), torch.as_tensor(iou), torch.as_tensor(low)


def _check(ours: SAM, emb, ref: SamPredictor, report: dict, name: str, **kw) -> Decoded:
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
    ref_logits, ref_iou, ref_low = _ref(
        ref, mask_input=None if mask_input is None else np.asarray(mask_input), multimask_output=multimask, **kw
    )
    assert dec.low_res_logits.shape == ref_low.shape
    diff = (dec.low_res_logits - ref_low).abs().max().item()
    report[name] = diff
    assert diff <= ATOL, f"{name}: low-res logits differ by {diff}"
    assert torch.allclose(dec.iou, ref_iou, atol=1e-5, rtol=0), f"{name}: IoU {dec.iou} vs {ref_iou}"

    up = ours.upscale(dec.low_res_logits, emb)
    assert up.shape == ref_logits.shape == (dec.low_res_logits.shape[0], H, W)
    ours_mask, ref_mask = up > 0, ref_logits > 0
    differ = ours_mask != ref_mask
    assert int(differ.sum()) <= 5, f"{name}: {int(differ.sum())} mask pixels differ"
    assert bool((ref_logits[differ].abs() < ATOL).all()), f"{name}: a differing pixel is not on the boundary"
    return dec


@pytest.fixture(scope="module")
def report():
    diffs: dict[str, float] = {}
    yield diffs
    print("\nmax |low-res logit difference| vs SamPredictor:", {k: f"{v:.2e}" for k, v in diffs.items()})


def test_embedding_equals_sam_predictor(pair) -> None:
    ours, emb, ref = pair
    assert emb.image_hw == (H, W)
    assert emb.extra["input_hw"] == ref.input_size == (768, 1024)
    assert emb.extra["low_res_hw"] == (192, 256)
    assert (emb.tensors["image_embed"] - ref.features).abs().max().item() <= ATOL


@pytest.mark.parametrize("multimask", [False, True])
def test_points_box_and_both(pair, report, multimask: bool) -> None:
    ours, emb, ref = pair
    tag = "multi" if multimask else "single"
    _check(ours, emb, ref, report, f"points/{tag}", point_coords=POINTS, point_labels=LABELS, multimask=multimask)
    _check(ours, emb, ref, report, f"box/{tag}", box=BOX, multimask=multimask)
    both = {"box": BOX, "point_coords": POINTS, "point_labels": LABELS}
    _check(ours, emb, ref, report, f"box+points/{tag}", multimask=multimask, **both)


def test_mask_input_and_cached_embedding(pair, report) -> None:
    ours, emb, ref = pair
    first = _check(ours, emb, ref, report, "first", point_coords=POINTS[:1], point_labels=LABELS[:1], multimask=True)
    prev = first.low_res_logits[first.best()][None]
    # decode again from the same (cached) embedding with the previous low-res logits as mask prompt
    _check(ours, emb, ref, report, "mask_input", point_coords=POINTS, point_labels=LABELS, mask_input=prev)
    again = ours.decode(emb, POINTS, LABELS, mask_input=prev)
    twice = ours.decode(emb, POINTS, LABELS, mask_input=prev)
    assert torch.equal(again.low_res_logits, twice.low_res_logits)
    # a mask prompt made from a binary mask only fills the image's part of the low-res frame
    m = ours.mask_to_low_res(np.ones((H, W), bool), emb)
    assert m.shape == (1, 256, 256) and bool((m[0, :192] > 0).all()) and bool((m[0, 192:] < 0).all())
    _check(ours, emb, ref, report, "binary_mask_input", box=BOX, mask_input=m)


def test_medsam_matches_its_inference_recipe(sam_net, image) -> None:
    """MedSAM: 1024 x 1024 no-aspect input in [0, 1], box * 1024 / (W, H), low-res resized straight to (H, W)."""
    medsam = SAM(sam_net, "cpu", medsam=True)
    emb = medsam.encode(image)
    assert emb.extra["low_res_hw"] == (256, 256)
    dec = medsam.decode(emb, box=BOX)

    # MedSAM_Inference.py (bowang-lab/MedSAM): medsam_inference() on the same embedding
    box_1024 = BOX[None] / np.array([W, H, W, H]) * 1024
    box_t = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]
    with torch.no_grad():
        sparse, dense = sam_net.prompt_encoder(points=None, boxes=box_t, masks=None)
        low, _ = sam_net.mask_decoder(
            image_embeddings=emb.tensors["image_embed"],
            image_pe=sam_net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        prob = F.interpolate(torch.sigmoid(low), size=(H, W), mode="bilinear", align_corners=False)[0]
    assert (dec.low_res_logits - low[0]).abs().max().item() <= ATOL
    ours_mask = medsam.upscale(dec.low_res_logits, emb) > 0
    # sigmoid-then-resize vs resize-then-threshold can only disagree right at the boundary
    assert int((ours_mask != (prob > 0.5)).sum()) <= 0.002 * H * W


def test_medsam_preprocess() -> None:
    img = _image()
    x = medsam_preprocess(img)
    assert x.shape == (1, 3, 1024, 1024)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # at the model size the resize is the identity: only the min-max scaling is left
    big = np.random.default_rng(1).integers(10, 200, (1024, 1024, 3), dtype=np.uint8)
    expected = (big.astype(np.float32) - big.min()) / (big.max() - big.min())
    assert np.abs(medsam_preprocess(big)[0].permute(1, 2, 0).numpy() - expected).max() < 1e-6


def test_load_model_builds_every_variant_with_random_weights() -> None:
    from SAMSegmentLib.models import load_model

    for name, medsam in [("sam_vit_b", False), ("medsam_vit_b", True)]:
        model = load_model(name, device="cpu", random_init=True, backend="torch")
        assert isinstance(model, SAM) and model.medsam is medsam and model.name == name
