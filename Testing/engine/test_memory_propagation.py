"""Memory-based propagation (SAM 2 family) against sam2's own SAM2VideoPredictor.

Equivalence: one randomly initialised SAM 2.1 tiny (``torch.manual_seed(3)``, ``image_size`` lowered to 256 with a
hydra override so the file runs in about a minute on a CPU; the driver logic does not depend on the resolution) is
driven twice on the same synthetic 24-slice volume: once by sam2 (``init_state`` on a frame folder,
``add_new_points_or_box`` / ``add_new_mask``, ``propagate_in_video`` forward then ``reverse=True``), once by
:func:`propagate_memory`. The folder holds PNG data in files named ``00000.jpg`` ...: sam2's loader globs ``*.jpg``
and PIL opens files by content, so the reference goes through sam2's stock loader without JPEG loss and both paths
see bit-identical frames.

Memory release: a stub model runs sam2's real ``SAM2Base._prepare_memory_conditioned_features`` over long volumes in
milliseconds and fails if it looks up a memory that sam2 would hold but the driver has already released.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from SAMSegmentLib.prompts import PromptError
from SAMSegmentLib.propagation.memory import FramePrompt, PropagationCancelled, prepare_frame, propagate_memory

sam2 = pytest.importorskip("sam2")
from sam2.modeling.sam2_base import SAM2Base  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*Skipping the post-processing:UserWarning")

log = logging.getLogger(__name__)

IMAGE_SIZE = 256
NUM_FRAMES, HEIGHT, WIDTH = 24, 160, 200
MODEL_SEED = 3  # random weights whose masks follow the synthetic object (neither empty nor full)


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """uint8 [NUM_FRAMES, HEIGHT, WIDTH]: a bright ellipse that moves and changes size, on noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    slices = []
    for k in range(NUM_FRAMES):
        cx, cy, r = 100 + 1.5 * (k - 12), 80 + (k - 12), 40 - 1.5 * abs(k - 12)
        img = 40 + 20 * rng.standard_normal((HEIGHT, WIDTH))
        img[((xx - cx) / 1.2) ** 2 + (yy - cy) ** 2 < r * r] += 150
        slices.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(slices)


@pytest.fixture(scope="module")
def frames_dir(volume: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("frames")
    for k, img in enumerate(volume):
        Image.fromarray(img).save(folder / f"{k:05d}.jpg", format="PNG")  # lossless data under sam2's expected name
    return folder


@pytest.fixture(scope="module")
def model():
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(MODEL_SEED)
    return build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={IMAGE_SIZE}"],
    )


def ellipse_mask(k: int) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cx, cy, r = 100 + 1.5 * (k - 12), 80 + (k - 12), 40 - 1.5 * abs(k - 12)
    return ((xx - cx) / 1.2) ** 2 + (yy - cy) ** 2 < r * r


# --- helpers -----------------------------------------------------------------------------------------------------


def run_sam2(model, frames_dir: Path, prompts: dict[int, FramePrompt], passes) -> list[tuple[int, torch.Tensor]]:
    """sam2's stock path. ``passes``: (reverse, start_frame_idx, max_frame_num_to_track) per propagate_in_video call.
    Returns (index, logits [H, W]) in the order sam2 yields them, first occurrence of each frame only."""
    state = model.init_state(str(frames_dir), offload_video_to_cpu=True)
    for idx, p in prompts.items():
        if p.mask is not None:
            model.add_new_mask(state, idx, 1, p.mask)
        else:
            has_points = len(p.points) > 0
            model.add_new_points_or_box(
                state,
                idx,
                1,
                points=p.points if has_points else None,
                labels=p.labels if has_points else None,
                box=p.box,
            )
    seen: dict[int, torch.Tensor] = {}
    for reverse, start, max_track in passes:
        for idx, _, masks in model.propagate_in_video(
            state, start_frame_idx=start, max_frame_num_to_track=max_track, reverse=reverse
        ):
            if idx not in seen:
                seen[idx] = masks[0, 0].float().cpu().clone()
    return list(seen.items())


def compare(reference: list[tuple[int, torch.Tensor]], ours: dict[int, torch.Tensor]) -> tuple[float, float]:
    """Per-frame mask IoU (min over frames) and max abs logit difference; checks the reference is non-trivial."""
    assert sorted(ours) == sorted(i for i, _ in reference)
    ious, diffs, fractions = [], [], []
    for idx, ref in reference:
        a, b = ref > 0, ours[idx] > 0
        union = int((a | b).sum())
        ious.append(1.0 if union == 0 else int((a & b).sum()) / union)
        diffs.append(float((ref - ours[idx]).abs().max()))
        fractions.append(float(a.float().mean()))
    nontrivial = sum(0.01 < f < 0.99 for f in fractions)
    assert nontrivial >= 0.8 * len(fractions), f"random-weight masks are trivial: {fractions}"
    return min(ious), max(diffs)


def check_equivalent(reference, ours, label: str, seconds: tuple[float, float]) -> None:
    min_iou, max_diff = compare(reference, ours)
    message = (
        f"{label}: {len(ours)} frames, min IoU {min_iou:.6f}, max |logit diff| {max_diff:.3g}, "
        f"sam2 {seconds[0]:.1f} s, ours {seconds[1]:.1f} s"
    )
    print(message)
    log.info(message)
    assert min_iou >= 0.999, message
    assert max_diff <= 1e-3, message


# --- equivalence with sam2 ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_prompted_slice_both_directions(model, volume, frames_dir):
    prompts = {12: FramePrompt(points=[[100, 80]], labels=[1], box=[55, 38, 145, 122])}
    t0 = time.perf_counter()
    reference = run_sam2(model, frames_dir, prompts, [(False, None, None), (True, None, None)])
    t1 = time.perf_counter()
    streamed: list[tuple[int, torch.Tensor, float]] = []
    returned = propagate_memory(
        model, lambda i: volume[i], NUM_FRAMES, prompts, on_frame=lambda i, lg, s: streamed.append((i, lg, s))
    )
    t2 = time.perf_counter()
    assert returned == {}
    assert [i for i, _, _ in streamed] == [i for i, _ in reference]  # same order: 12..23, then 11..0
    assert all(lg.dtype == torch.float32 and lg.shape == (HEIGHT, WIDTH) for _, lg, _ in streamed)
    check_equivalent(reference, {i: lg for i, lg, _ in streamed}, "one prompted slice", (t1 - t0, t2 - t1))


@pytest.mark.slow
def test_two_prompted_slices_both_directions(model, volume, frames_dir):
    prompts = {
        5: FramePrompt(points=[[88, 73], [15, 15]], labels=[1, 0]),
        17: FramePrompt(box=[72, 52, 142, 118]),
    }
    t0 = time.perf_counter()
    reference = run_sam2(model, frames_dir, prompts, [(False, None, None), (True, None, None)])
    t1 = time.perf_counter()
    ours = propagate_memory(model, lambda i: volume[i], NUM_FRAMES, prompts)
    t2 = time.perf_counter()
    check_equivalent(reference, ours, "two prompted slices", (t1 - t0, t2 - t1))


@pytest.mark.slow
def test_openvino_image_encoder_propagates_like_sam2(model, volume, frames_dir, tmp_path):
    """The same propagation with the image encoder exported to OpenVINO (f32), as the OpenVINO backend runs it,
    within the same tolerance of sam2's own video predictor."""
    pytest.importorskip("openvino")
    from SAMSegmentLib.backends import apply_backend
    from SAMSegmentLib.models.sam2 import SAM2

    adapter = SAM2(model, "cpu")
    adapter.name = "sam2-memory-test"
    apply_backend(adapter, "openvino", "fp32", root=tmp_path)
    assert set(adapter.runners) == {"image_encoder"}
    prompts = {12: FramePrompt(points=[[100, 80]], labels=[1], box=[55, 38, 145, 122])}
    t0 = time.perf_counter()
    reference = run_sam2(model, frames_dir, prompts, [(False, None, None), (True, None, None)])
    t1 = time.perf_counter()
    ours = propagate_memory(model, lambda i: volume[i], NUM_FRAMES, prompts, forward_image=adapter.forward_image)
    t2 = time.perf_counter()
    check_equivalent(reference, ours, "OpenVINO image encoder", (t1 - t0, t2 - t1))


@pytest.mark.slow
def test_mask_prompt_backward_within_range(model, volume, frames_dir):
    # 'backward' starts at the last prompted slice; the mask-prompted slice 8 is passed on the way
    prompts = {8: FramePrompt(mask=ellipse_mask(8)), 16: FramePrompt(points=[[106, 84]], labels=[1])}
    t0 = time.perf_counter()
    reference = run_sam2(model, frames_dir, prompts, [(True, 16, 16 - 2)])
    t1 = time.perf_counter()
    ours = propagate_memory(model, lambda i: volume[i], NUM_FRAMES, prompts, direction="backward", frame_range=(2, 21))
    t2 = time.perf_counter()
    check_equivalent(reference, ours, "mask prompt, backward in range", (t1 - t0, t2 - t1))


@pytest.mark.slow
def test_forward_within_range_with_prompt_outside(model, volume, frames_dir):
    # the prompt on slice 20 lies outside the range: still a conditioning frame, as in sam2, but not reported
    prompts = {3: FramePrompt(points=[[84, 71]], labels=[1]), 20: FramePrompt(points=[[112, 88]], labels=[1])}
    t0 = time.perf_counter()
    reference = run_sam2(model, frames_dir, prompts, [(False, 3, 14 - 3)])
    t1 = time.perf_counter()
    ours = propagate_memory(model, lambda i: volume[i], NUM_FRAMES, prompts, direction="forward", frame_range=(1, 14))
    t2 = time.perf_counter()
    check_equivalent(reference, ours, "forward in range, prompt outside", (t1 - t0, t2 - t1))


def test_frame_preparation_matches_sam2_loader(volume, frames_dir):
    from sam2.utils.misc import load_video_frames

    images, height, width = load_video_frames(str(frames_dir), IMAGE_SIZE, offload_video_to_cpu=True)
    assert (height, width) == (HEIGHT, WIDTH)
    for k in (0, 11, 23):
        assert torch.equal(prepare_frame(volume[k], IMAGE_SIZE), images[k])


# --- memory release, with sam2's own memory selection on a stub model --------------------------------------------


class _AuditedOutputs(dict):
    """``non_cond_frame_outputs`` as the driver holds it; a lookup of a frame sam2 would still hold fails."""

    def __init__(self, held: dict, produced: set[int], reader: int) -> None:
        super().__init__(held)
        self.produced = produced
        self.reader = reader

    def get(self, key, default=None):
        if key in self.produced and key not in self:
            raise AssertionError(f"slice {self.reader} reads the memory of slice {key}, which was released")
        return super().get(key, default)


class StubSam2:
    """Just enough of ``SAM2Base`` for the driver; memory selection is sam2's own method, tensors are tiny."""

    def __init__(self, num_maskmem: int = 7, stride: int = 1, max_ptrs: int = 16) -> None:
        self.hidden_dim = self.mem_dim = 4
        self.num_maskmem = num_maskmem
        self.memory_temporal_stride_for_eval = stride
        self.max_obj_ptrs_in_encoder = max_ptrs
        self.max_cond_frames_in_attn = -1
        self.use_obj_ptrs_in_encoder = True
        self.only_obj_ptrs_in_the_past_for_eval = True
        self.use_signed_tpos_enc_to_obj_ptrs = True
        self.add_tpos_enc_to_obj_ptrs = False
        self.proj_tpos_enc_in_obj_ptrs = False
        self.directly_add_no_mem_embed = True
        self.no_mem_embed = torch.zeros(1, 1, 4)
        self.maskmem_tpos_enc = torch.zeros(num_maskmem, 1, 1, 4)
        self.training = False
        self.image_size = 8
        self.fill_hole_area = 0
        self.device = torch.device("cpu")
        self.produced: set[int] = set()
        self.held_peak = 0
        self.tracked: list[tuple[int, bool]] = []

    def forward_image(self, batch: torch.Tensor) -> dict:
        return {"backbone_fpn": [torch.zeros(1, 4, 2, 2)], "vision_pos_enc": [torch.zeros(1, 4, 2, 2)]}

    def _prepare_backbone_features(self, out: dict):
        flat = [x.flatten(2).permute(2, 0, 1) for x in out["backbone_fpn"]]
        pos = [x.flatten(2).permute(2, 0, 1) for x in out["vision_pos_enc"]]
        return out, flat, pos, [(2, 2)]

    def memory_attention(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens):
        return curr[0] + memory.sum(0, keepdim=True)

    def _encode_new_memory(self, **kwargs):
        return torch.zeros(1, 4, 2, 2), [torch.zeros(1, 4, 2, 2)]

    def track_step(self, frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes,
                   point_inputs, mask_inputs, output_dict, num_frames, track_in_reverse=False, run_mem_encoder=True):  # fmt: skip
        held = output_dict["non_cond_frame_outputs"]
        self.held_peak = max(self.held_peak, len(held))
        audited = {
            "cond_frame_outputs": output_dict["cond_frame_outputs"],
            "non_cond_frame_outputs": _AuditedOutputs(held, self.produced, frame_idx),
        }
        SAM2Base._prepare_memory_conditioned_features(
            self, frame_idx, is_init_cond_frame, current_vision_feats[-1:], current_vision_pos_embeds[-1:],
            feat_sizes[-1:], audited, num_frames, track_in_reverse,
        )  # fmt: skip
        if not is_init_cond_frame:
            self.produced.add(frame_idx)
            self.tracked.append((frame_idx, track_in_reverse))
        out = {
            "pred_masks": torch.ones(1, 1, 2, 2),
            "obj_ptr": torch.zeros(1, 4),
            "object_score_logits": torch.ones(1, 1),
        }
        if run_mem_encoder:
            out["maskmem_features"], out["maskmem_pos_enc"] = self._encode_new_memory()
        return out


def _blank(i: int) -> np.ndarray:
    return np.zeros((6, 5), dtype=np.uint8)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("num_maskmem,max_ptrs", [(7, 16), (3, 4), (7, 4)])
@pytest.mark.parametrize(
    "seeds,direction,frame_range",
    [
        ((40,), "both", None),
        ((10, 30, 31, 70), "both", None),
        ((25, 60), "forward", (5, 90)),
        ((25, 60), "backward", (5, 90)),
        ((1,), "both", (1, 99)),
        ((98,), "both", None),
        ((0,), "both", None),
        ((0,), "backward", None),
    ],
)
def test_released_memory_is_never_read(stride, num_maskmem, max_ptrs, seeds, direction, frame_range):
    stub = StubSam2(num_maskmem, stride, max_ptrs)
    prompts = {s: FramePrompt(points=[[2, 2]], labels=[1]) for s in seeds}
    ours = propagate_memory(stub, _blank, 100, prompts, direction=direction, frame_range=frame_range)
    lo, hi = frame_range or (0, 99)
    first, last = min(seeds), max(seeds)
    expected = {
        "both": set(range(lo, hi + 1)) if first > 0 else set(range(first, hi + 1)),
        "forward": set(range(first, hi + 1)),
        "backward": set(range(lo, last + 1)),
    }[direction]
    assert set(ours) == expected
    window = (num_maskmem - 1) * stride + 1  # frames one pass keeps for spatial memory
    assert stub.held_peak <= 2 * max(window, max_ptrs) + 2


def test_memory_does_not_grow_with_slices():
    peaks = []
    for n in (100, 600):
        stub = StubSam2()
        propagate_memory(stub, _blank, n, {n // 2: FramePrompt(points=[[2, 2]], labels=[1])}, on_frame=lambda *a: None)
        peaks.append(stub.held_peak)
    assert peaks[0] == peaks[1] <= 2 * 15


def test_streaming_order_and_cancel():
    stub = StubSam2()
    seen: list[int] = []
    with pytest.raises(PropagationCancelled):
        propagate_memory(
            stub,
            _blank,
            30,
            {10: FramePrompt(box=[0, 0, 4, 5])},
            on_frame=lambda i, lg, s: seen.append(i),
            should_stop=lambda: len(seen) >= 4,
        )
    assert seen == [10, 11, 12, 13]
    assert [i for i, _ in stub.tracked] == [11, 12, 13]


def test_bad_inputs():
    stub = StubSam2()
    with pytest.raises(PromptError):
        FramePrompt(points=[[1, 1]], labels=[1], mask=np.ones((6, 5), bool))
    with pytest.raises(PromptError):
        FramePrompt()
    with pytest.raises(PromptError):
        propagate_memory(stub, _blank, 30, {2: FramePrompt(box=[0, 0, 4, 5])}, frame_range=(5, 9))
    with pytest.raises(ValueError):
        propagate_memory(stub, _blank, 30, {2: FramePrompt(box=[0, 0, 4, 5])}, direction="sideways")
    with pytest.raises(ValueError):
        propagate_memory(stub, lambda i: np.zeros((6, 5), np.float32), 30, {2: FramePrompt(box=[0, 0, 4, 5])})
