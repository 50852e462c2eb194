"""SAM 2 family through the session: memory propagation on voxel prompts, streamed, with the right geometry.

Random weights (MedSAM2's 512 px architecture, the fastest on CPU): this checks the plumbing between voxel
slices and sam2 frames — equivalence of the tracking itself with sam2's video predictor is
test_memory_propagation.py's job.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from SAMSegmentLib.models import load_model  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt  # noqa: E402
from SAMSegmentLib.propagation import PropagationCancelled  # noqa: E402
from SAMSegmentLib.propagation.memory import FramePrompt, propagate_memory  # noqa: E402
from SAMSegmentLib.session import SegmentationSession  # noqa: E402
from SAMSegmentLib.slices import logits_to_voxel_grid  # noqa: E402
from SAMSegmentLib.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("medsam2", device="cpu", random_init=True, backend="torch")  # plumbing only: no export


def _volume() -> Volume:
    rng = np.random.default_rng(3)
    array = rng.normal(100, 10, size=(7, 40, 60)).astype(np.int16)
    array[:, 10:30, 15:45] += 400
    # anisotropic in-plane spacing: the model grid differs from the voxel grid
    return Volume(array, np.diag([0.5, 1.0, 3.0, 1.0]))


def test_session_uses_memory_propagation_and_maps_geometry(model):
    volume = _volume()
    session = SegmentationSession(model, volume)
    prompt = SlicePrompt(box=[15, 10, 44, 29], points=[[30, 20]], labels=[1])
    streamed = []
    result = session.propagate("K", {3: prompt}, "both", on_slice=lambda o: streamed.append(o.index))
    assert sorted(result.outcomes) == list(range(7))
    assert streamed[0] == 3 and result.outcomes[3].source == "prompt"
    assert all(o.mask.shape == (40, 60) for o in result.outcomes.values())
    # the same frames and prompt, driven directly on the model grid, give the same masks once mapped back
    geo = session.predictor.geometry("K")
    frame_prompt = FramePrompt(points=geo.to_model_xy(prompt.points), labels=prompt.labels,
                               box=geo.box_to_model(prompt.box))
    direct = propagate_memory(model.sam2_model, lambda i: session.predictor.slice_image("K", i), 7, {3: frame_prompt},
                              forward_image=model.forward_image)
    for index, logits in direct.items():
        np.testing.assert_array_equal(result.outcomes[index].mask, logits_to_voxel_grid(logits, geo) > 0)


def test_memory_propagation_cancels(model):
    session = SegmentationSession(model, _volume())
    seen = []
    with pytest.raises(PropagationCancelled):
        session.propagate("K", {3: SlicePrompt(box=[15, 10, 44, 29])}, "both", on_slice=lambda o: seen.append(o),
                          should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2
