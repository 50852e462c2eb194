"""Memory-based propagation for the SAM 2 family (SAM 2.1, MedSAM2), streamed over lazily produced frames.

The slices of a volume are the frames of a video. This module drives a sam2 ``SAM2VideoPredictor`` (a ``SAM2Base``)
with its own loop instead of ``init_state`` / ``propagate_in_video``, with the same results and bounded memory:

- a frame is read (``frame(index)``, uint8), resized to ``image_size`` and normalised only when propagation reaches
  it, exactly as ``sam2.utils.misc.load_video_frames`` does (PIL resize of the RGB uint8 image, / 255 in float64,
  cast to float32, minus mean, divided by std); nothing is written to disk and no tensor holds the whole volume;
- its image features are computed once, used for that frame's tracking step and memory encoding, and dropped;
- the memory bank keeps only what ``SAM2Base._prepare_memory_conditioned_features`` can still read: every
  conditioning (prompted) frame, the spatial memories of the last ``num_maskmem - 1`` tracked frames (with the
  model's temporal stride) and the object pointers of the last ``max_obj_ptrs_in_encoder - 1`` tracked frames.
  Where a later pass (the backward half of ``direction="both"``) will read memories of the current pass, those few
  are kept until it has run. Memory therefore does not grow with the number of slices.

Semantics are those of sam2 (one object):

- every prompted frame is an initial conditioning frame, as after ``add_new_points_or_box`` (a box goes in as two
  points with labels 2 and 3 before the clicks) or ``add_new_mask``; its memory is encoded from its hole-filled
  low-resolution mask as ``propagate_in_video_preflight`` does;
- ``direction="forward"`` is ``propagate_in_video()`` (from the first prompted frame up to the last frame);
  ``"both"`` is ``propagate_in_video()`` followed by ``propagate_in_video(reverse=True)`` (the backward pass starts
  at the first prompted frame too and may attend to memories of the forward pass next to it);
  ``"backward"`` is ``propagate_in_video(reverse=True, start_frame_idx=<last prompted frame>)``, so that every
  frame between the prompted frames is covered, as in the forward direction. One deliberate difference: where
  sam2 skips a reverse pass that would start at frame 0 altogether, here it still reports that prompted frame;
- ``frame_range=(lo, hi)`` maps to ``start_frame_idx`` / ``max_frame_num_to_track``: propagation visits only
  frames in ``[lo, hi]`` and starts from the prompted frames inside it. Prompted frames outside the range are still
  conditioning frames (sam2 attends to all of them) but are not reported.

Coordinates: points and boxes are in frame pixel coordinates, x along columns and y along rows, the convention of
sam2's ``add_new_points_or_box`` (normalised by the frame width and height, then scaled to ``image_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..prompts import PromptError
from .plan import PropagationCancelled

log = logging.getLogger(__name__)

__all__ = [
    "SAM2_IMG_MEAN",
    "SAM2_IMG_STD",
    "FramePrompt",
    "PropagationCancelled",
    "prepare_frame",
    "propagate_memory",
]

#: Normalisation of sam2's video loader (``sam2.utils.misc.load_video_frames`` defaults), RGB in [0, 1].
SAM2_IMG_MEAN = (0.485, 0.456, 0.406)
SAM2_IMG_STD = (0.229, 0.224, 0.225)

DIRECTIONS = ("both", "forward", "backward")


@dataclass
class FramePrompt:
    """The prompt on one conditioning frame, in frame pixel coordinates.

    ``points`` float [N, 2] (x, y), ``labels`` int [N] (1 include, 0 exclude), ``box`` float [4] (x0, y0, x1, y1)
    or None, ``mask`` bool [H, W] at the frame's resolution or None. As in sam2, a frame takes either a mask or
    points and/or a box, not both.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int32))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        if len(self.points) != len(self.labels):
            raise PromptError("each point needs exactly one label (1 include, 0 exclude)")
        if self.labels.size and not np.isin(self.labels, (0, 1)).all():
            raise PromptError("point labels must be 1 (include) or 0 (exclude)")
        if self.box is not None:
            b = np.asarray(self.box, dtype=np.float32).reshape(-1)
            if b.size != 4:
                raise PromptError("a box needs 4 numbers: x0, y0, x1, y1")
            x0, y0, x1, y1 = b
            self.box = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], dtype=np.float32)
        if self.mask is not None:
            self.mask = np.asarray(self.mask).astype(bool)
            if self.mask.ndim != 2:
                raise PromptError(f"a mask prompt must be 2D [rows, cols], got shape {self.mask.shape}")
            if self.box is not None or len(self.points):
                raise PromptError("SAM 2 takes either a mask or points/box on a slice, not both")
        if self.box is None and not len(self.points) and self.mask is None:
            raise PromptError("a prompt needs points, a box or a mask")


def prepare_frame(
    image: np.ndarray,
    image_size: int,
    mean: tuple[float, float, float] = SAM2_IMG_MEAN,
    std: tuple[float, float, float] = SAM2_IMG_STD,
) -> torch.Tensor:
    """One frame as sam2's video loader prepares it: float32 [3, image_size, image_size], normalised.

    ``image`` is uint8 [H, W] (grey, replicated to RGB as PIL's ``convert("RGB")`` does) or [H, W, 3] (RGB).
    """
    if image.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (windowed), got {image.dtype}")
    if image.ndim == 2:
        pil = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    elif image.ndim == 3 and image.shape[2] == 3:
        pil = Image.fromarray(np.ascontiguousarray(image))
    else:
        raise ValueError(f"frames must be [H, W] or [H, W, 3], got shape {image.shape}")
    resized = np.asarray(pil.resize((image_size, image_size)))
    # float64 division then a float32 cast, then float32 normalisation: sam2's numerics exactly
    tensor = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
    tensor -= torch.tensor(mean, dtype=torch.float32)[:, None, None]
    tensor /= torch.tensor(std, dtype=torch.float32)[:, None, None]
    return tensor


def _frame_shape(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[0]), int(image.shape[1])


# --- which memories sam2 reads -----------------------------------------------------------------------------------


def _stride(model: Any) -> int:
    return 1 if model.training else int(model.memory_temporal_stride_for_eval)


def _maskmem_reads(model: Any, frame_idx: int, reverse: bool) -> list[int]:
    """Frames whose spatial memory (``maskmem_features``) ``_prepare_memory_conditioned_features`` looks up in
    ``non_cond_frame_outputs`` when tracking ``frame_idx`` (besides the conditioning frames, which it always reads)."""
    r = _stride(model)
    sign = -1 if reverse else 1
    reads = []
    for t_rel in range(1, model.num_maskmem):
        if t_rel == 1:
            reads.append(frame_idx - sign)
        elif not reverse:
            reads.append(((frame_idx - 2) // r) * r - (t_rel - 2) * r)
        else:
            reads.append(-(-(frame_idx + 2) // r) * r + (t_rel - 2) * r)
    return reads


def _ptr_reads(model: Any, frame_idx: int, reverse: bool, num_frames: int) -> list[int]:
    """Frames whose object pointer ``_prepare_memory_conditioned_features`` looks up when tracking ``frame_idx``."""
    if not model.use_obj_ptrs_in_encoder:
        return []
    sign = -1 if reverse else 1
    reads = []
    for t_diff in range(1, min(num_frames, model.max_obj_ptrs_in_encoder)):
        t = frame_idx - sign * t_diff
        if t < 0 or t >= num_frames:
            break
        reads.append(t)
    return reads


@dataclass
class _Pass:
    """One call of sam2's ``propagate_in_video``: frames ``start`` to ``end`` inclusive, stepping ``step`` (+1 / -1)."""

    start: int
    end: int
    step: int

    @property
    def reverse(self) -> bool:
        return self.step < 0

    def frames(self) -> range:
        return range(self.start, self.end + self.step, self.step)


class _MemoryBank:
    """sam2's per-object ``output_dict`` with only the entries that can still be read.

    Entries are the compact outputs sam2 stores: ``maskmem_features`` (bf16 [1, mem_dim, h, w], dropped once no
    later frame reads it), ``maskmem_pos_enc`` (one shared list), ``obj_ptr`` [1, C] and ``object_score_logits``.
    """

    def __init__(self) -> None:
        self.cond: dict[int, dict[str, Any]] = {}
        self.non_cond: dict[int, dict[str, Any]] = {}
        self.pos_enc: list[torch.Tensor] | None = None
        self.peak_maskmem = 0
        self.peak_ptrs = 0

    @property
    def output_dict(self) -> dict[str, dict[int, dict[str, Any]]]:
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.non_cond}

    def compact(self, maskmem_features: torch.Tensor, maskmem_pos_enc: list[torch.Tensor], out: dict) -> dict:
        """The entry to store for a frame: spatial memory in bf16 (as sam2 stores it), shared positional encoding."""
        if self.pos_enc is None:
            self.pos_enc = [x[0:1].clone() for x in maskmem_pos_enc]
        return {
            "maskmem_features": maskmem_features.to(torch.bfloat16),
            "maskmem_pos_enc": self.pos_enc,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def add_non_cond(self, frame_idx: int, entry: dict[str, Any]) -> None:
        self.non_cond[frame_idx] = entry
        held = sum(1 for e in self.non_cond.values() if "maskmem_features" in e)
        self.peak_maskmem = max(self.peak_maskmem, held)
        self.peak_ptrs = max(self.peak_ptrs, len(self.non_cond))

    def release(self, keep_maskmem: Callable[[int], bool], keep_ptr: Callable[[int], bool]) -> None:
        """Drop spatial memories and object pointers that no later frame reads."""
        for idx in list(self.non_cond):
            entry = self.non_cond[idx]
            if "maskmem_features" in entry and not keep_maskmem(idx):
                # an entry without spatial memory is only ever looked up for its object pointer
                entry = {"obj_ptr": entry["obj_ptr"]}
                self.non_cond[idx] = entry
            if "maskmem_features" not in entry and not keep_ptr(idx):
                del self.non_cond[idx]

    def clear_around(self, frame_idx: int, radius: int) -> None:
        """sam2's ``clear_non_cond_mem_around_input``: forget tracked memories within ``radius`` of a prompt."""
        for idx in range(frame_idx - radius, frame_idx + radius + 1):
            self.non_cond.pop(idx, None)


class _Sam2Runner:
    """The per-frame steps of ``SAM2VideoPredictor`` on one object, built from ``SAM2Base`` methods."""

    def __init__(
        self,
        model: Any,
        frame: Callable[[int], np.ndarray],
        num_frames: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        forward_image: Callable[[torch.Tensor], dict] | None = None,
    ) -> None:
        self.model = model
        self.forward_image = forward_image or model.forward_image
        self.frame = frame
        self.num_frames = num_frames
        self.mean = mean
        self.std = std
        self.device = model.device
        self.image_size = int(model.image_size)
        self.frame_hw: tuple[int, int] | None = None
        self.bank = _MemoryBank()

    def features(self, frame_idx: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Image features of one frame: vision feats and pos embeds [(h*w), 1, C] per level, and their sizes."""
        image = self.frame(frame_idx)
        hw = _frame_shape(image)
        if self.frame_hw is None:
            self.frame_hw = hw
        elif hw != self.frame_hw:
            raise ValueError(
                f"frame {frame_idx} is {hw[0]} x {hw[1]}, earlier frames {self.frame_hw[0]} x {self.frame_hw[1]}"
            )
        batch = prepare_frame(image, self.image_size, self.mean, self.std).to(self.device).unsqueeze(0)
        backbone_out = self.forward_image(batch)
        _, vision_feats, vision_pos, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        return vision_feats, vision_pos, feat_sizes

    def _fill_holes(self, low_res: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "fill_hole_area", 0) > 0:
            from sam2.utils.misc import fill_holes_in_mask_scores

            return fill_holes_in_mask_scores(low_res, self.model.fill_hole_area)
        return low_res

    def _point_inputs(self, prompt: FramePrompt) -> dict[str, torch.Tensor]:
        height, width = self.frame_hw
        points = torch.as_tensor(prompt.points, dtype=torch.float32)[None]
        labels = torch.as_tensor(prompt.labels, dtype=torch.int32)[None]
        if prompt.box is not None:
            box = torch.as_tensor(prompt.box, dtype=torch.float32).reshape(1, 2, 2)
            points = torch.cat([box, points], dim=1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], dim=1)
        points = points / torch.tensor([width, height]) * self.image_size
        return {"point_coords": points.to(self.device), "point_labels": labels.to(self.device)}

    def _mask_inputs(self, prompt: FramePrompt) -> torch.Tensor:
        if tuple(prompt.mask.shape) != self.frame_hw:
            raise PromptError(f"mask prompt has shape {prompt.mask.shape}, the frames are {self.frame_hw}")
        mask = torch.from_numpy(prompt.mask)[None, None].float().to(self.device)
        if mask.shape[-2:] != (self.image_size, self.image_size):
            mask = F.interpolate(
                mask, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
            mask = (mask >= 0.5).float()
        return mask

    def condition(self, frame_idx: int, prompt: FramePrompt) -> tuple[torch.Tensor, float]:
        """Segment a prompted frame without memory and store it as a conditioning frame.

        Returns its low-resolution logits [1, 1, image_size / 4, image_size / 4] and object score logit.
        """
        feats, pos, sizes = self.features(frame_idx)
        point_inputs = self._point_inputs(prompt) if prompt.mask is None else None
        mask_inputs = self._mask_inputs(prompt) if prompt.mask is not None else None
        out = self.model.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=True,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=self.bank.output_dict,
            num_frames=self.num_frames,
            track_in_reverse=False,
            run_mem_encoder=False,
        )
        low_res = self._fill_holes(out["pred_masks"])
        # as in propagate_in_video_preflight: memory from the (hole-filled) mask the user sees, binarised
        high_res = F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        maskmem, maskmem_pos = self.model._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        self.bank.cond[frame_idx] = self.bank.compact(maskmem, maskmem_pos, out)
        return low_res, float(out["object_score_logits"].reshape(-1)[0])

    def track(self, frame_idx: int, reverse: bool) -> tuple[torch.Tensor, float]:
        """Track into an unprompted frame from the memory bank; store its memory. Same returns as ``condition``."""
        feats, pos, sizes = self.features(frame_idx)
        out = self.model.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=False,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=None,
            mask_inputs=None,
            output_dict=self.bank.output_dict,
            num_frames=self.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=True,
        )
        self.bank.add_non_cond(frame_idx, self.bank.compact(out["maskmem_features"], out["maskmem_pos_enc"], out))
        return self._fill_holes(out["pred_masks"]), float(out["object_score_logits"].reshape(-1)[0])

    def to_frame_resolution(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits [1, 1, h, w] -> float32 logits [H, W] on the CPU at the frame's resolution."""
        logits = F.interpolate(low_res, size=self.frame_hw, mode="bilinear", align_corners=False)
        return logits[0, 0].float().cpu()


def _plan_passes(prompted: Iterable[int], direction: str, lo: int, hi: int) -> list[_Pass]:
    seeds = sorted(i for i in prompted if lo <= i <= hi)
    if not seeds:
        raise PromptError(f"no prompted slice lies in the propagation range {lo}..{hi}")
    passes = []
    if direction in ("forward", "both"):
        passes.append(_Pass(seeds[0], hi, +1))
    # (sam2 yields nothing for a reverse pass that starts at frame 0; here that pass reports the prompted frame)
    if direction == "both":
        passes.append(_Pass(seeds[0], lo, -1))
    if direction == "backward":
        passes.append(_Pass(seeds[-1], lo, -1))
    return passes


def _reads_of_passes(
    model: Any, passes: Iterable[_Pass], prompted: set[int], num_frames: int
) -> tuple[set[int], set[int]]:
    """All non-conditioning frames whose spatial memory / object pointer the given passes read."""
    maskmem: set[int] = set()
    ptrs: set[int] = set()
    for p in passes:
        for f in p.frames():
            if f not in prompted:
                maskmem.update(_maskmem_reads(model, f, p.reverse))
                ptrs.update(_ptr_reads(model, f, p.reverse, num_frames))
    return maskmem, ptrs


def _keep_rule(
    model: Any, p: _Pass, next_frame: int | None, later: tuple[set[int], set[int]], num_frames: int
) -> tuple[Callable[[int], bool], Callable[[int], bool]]:
    """Predicates saying whether a stored frame's spatial memory / object pointer will still be read.

    Within a pass the windows sam2 reads slide monotonically, so everything behind the oldest frame the next frame
    reads is dead for this pass; frames read by later passes are listed explicitly.
    """
    later_maskmem, later_ptrs = later
    if next_frame is None:
        return later_maskmem.__contains__, later_ptrs.__contains__
    mm = _maskmem_reads(model, next_frame, p.reverse) or [next_frame]
    pr = _ptr_reads(model, next_frame, p.reverse, num_frames) or [next_frame]
    if p.reverse:
        mm_edge, pr_edge = max(mm), max(pr)
        return (lambda i: i <= mm_edge or i in later_maskmem), (lambda i: i <= pr_edge or i in later_ptrs)
    mm_edge, pr_edge = min(mm), min(pr)
    return (lambda i: i >= mm_edge or i in later_maskmem), (lambda i: i >= pr_edge or i in later_ptrs)


def propagate_memory(
    sam2_model: Any,
    frame: Callable[[int], np.ndarray],
    num_frames: int,
    prompts: dict[int, FramePrompt],
    direction: str = "both",
    frame_range: tuple[int, int] | None = None,
    on_frame: Callable[[int, torch.Tensor, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    img_mean: tuple[float, float, float] = SAM2_IMG_MEAN,
    img_std: tuple[float, float, float] = SAM2_IMG_STD,
    forward_image: Callable[[torch.Tensor], dict] | None = None,
) -> dict[int, torch.Tensor]:
    """Propagate one object through a volume's slices with a SAM 2 family model's memory, as sam2's video predictor.

    Args:
        sam2_model: a sam2 ``SAM2VideoPredictor`` (or ``SAM2Base``) in eval mode, e.g. from
            ``sam2.build_sam.build_sam2_video_predictor``; its ``image_size``, memory settings and
            ``fill_hole_area`` are honoured.
        frame: ``frame(index)`` -> uint8 [H, W] (grey) or [H, W, 3] (RGB) slice image, windowed; called once per
            frame per pass, only when propagation reaches it. All frames share H and W.
        num_frames: number of slices (frames are 0 .. num_frames - 1).
        prompts: conditioning frames, index -> :class:`FramePrompt` in that frame's pixel coordinates.
        direction: ``"both"``, ``"forward"`` (increasing index) or ``"backward"``; see the module docstring for the
            exact sam2 equivalent of each.
        frame_range: inclusive ``(lo, hi)`` bounds of the frames propagation visits; default all.
        on_frame: called as ``on_frame(index, logits, object_score)`` once per visited frame, in processing order
            (outward from the prompted frames): ``logits`` float32 [H, W] on the CPU at the frame's resolution
            (mask = logits > 0), ``object_score`` the model's object-presence logit (> 0: object present).
        should_stop: checked before each frame; when it returns True, :class:`PropagationCancelled` is raised.
        img_mean, img_std: RGB normalisation; sam2's loader defaults.
        forward_image: replaces ``sam2_model.forward_image`` (same input and output), e.g. the adapter's, which
            runs an exported image encoder (backends); default the model's own.

    Returns:
        With ``on_frame`` None, ``{index: logits [H, W] float32 cpu}`` for every visited frame. With ``on_frame``
        given, an empty dict: results are only streamed, so memory stays independent of the number of slices.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if num_frames < 1:
        raise ValueError("there are no slices to propagate through")
    if not prompts:
        raise PromptError("propagation needs a prompt on at least one slice")
    for idx in prompts:
        if not 0 <= idx < num_frames:
            raise PromptError(f"prompted slice {idx} is outside 0..{num_frames - 1}")
    lo, hi = (0, num_frames - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
    if not 0 <= lo <= hi < num_frames:
        raise ValueError(f"frame range {lo}..{hi} is not within 0..{num_frames - 1}")

    passes = _plan_passes(prompts, direction, lo, hi)
    prompted = set(prompts)
    collected: dict[int, torch.Tensor] = {}
    reported: set[int] = set()

    def report(idx: int, low_res: torch.Tensor, score: float) -> None:
        if idx in reported or not lo <= idx <= hi:
            return
        reported.add(idx)
        logits = runner.to_frame_resolution(low_res)
        if on_frame is None:
            collected[idx] = logits
        else:
            on_frame(idx, logits, score)

    def check_stop() -> None:
        if should_stop():
            log.info("propagation cancelled after %d slices", len(reported))
            raise PropagationCancelled(f"propagation was cancelled after {len(reported)} slices")

    runner = _Sam2Runner(sam2_model, frame, num_frames, img_mean, img_std, forward_image)
    clear_radius = 0
    if getattr(sam2_model, "clear_non_cond_mem_around_input", False):
        clear_radius = _stride(sam2_model) * sam2_model.num_maskmem

    with torch.inference_mode():
        # conditioning frames first, as add_new_points_or_box / add_new_mask + propagate_in_video_preflight do
        cond_results: dict[int, tuple[torch.Tensor, float]] = {}
        for idx in sorted(prompts):
            check_stop()
            cond_results[idx] = runner.condition(idx, prompts[idx])

        for n, p in enumerate(passes):
            later = _reads_of_passes(sam2_model, passes[n + 1 :], prompted, num_frames)
            log.debug("pass %d: frames %d..%d", n, p.start, p.end)
            order = p.frames()
            for k, idx in enumerate(order):
                check_stop()
                if idx in prompted:
                    if clear_radius:
                        runner.bank.clear_around(idx, clear_radius)
                    low_res, score = cond_results[idx]
                else:
                    low_res, score = runner.track(idx, p.reverse)
                report(idx, low_res, score)
                next_frame = order[k + 1] if k + 1 < len(order) else None
                runner.bank.release(*_keep_rule(sam2_model, p, next_frame, later, num_frames))
    log.debug(
        "memory bank peak: %d spatial memories, %d object pointers (of non-prompted slices)",
        runner.bank.peak_maskmem,
        runner.bank.peak_ptrs,
    )
    return collected
