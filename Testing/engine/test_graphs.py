"""The exported decoder graphs (backends/graphs.py) in torch against segment_anything's own modules.

The graphs reassociate the decoder's cross attentions and write its transposed convolutions as matrix products;
these tests check that the arithmetic is the modules' (to float rounding) before any runtime sees it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

segment_anything = pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def sam_parts():
    """A randomly initialised SAM prompt encoder and mask decoder at LiteMedSAM's sizes (256 px input, 64 x 64
    embedding), with non-zero biases and norm parameters so that every term of the rewrite is exercised."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(0)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                       mask_in_chans=16)
    md = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                            mlp_dim=2048, num_heads=8),
                     transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    with torch.no_grad():
        for name, p in md.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return pe.eval(), md.eval()


PROMPTS = {
    "box": (None, None, [20.0, 30.0, 150.0, 170.0]),
    "one point": ([[90.0, 100.0]], [1], None),
    "points and box": ([[90.0, 100.0], [60.0, 70.0]], [1, 0], [20.0, 30.0, 150.0, 170.0]),
}


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("with_mask", [False, True])
def test_prompt_decoder_graph_matches_segment_anything(sam_parts, prompt, with_mask):
    from SAMSegmentLib.backends.graphs import pack_sam_points, sam_prompt_decoder_specs

    pe, md = sam_parts
    specs = sam_prompt_decoder_specs(pe, md)
    graph = specs["prompt_decoder"].module
    gen = torch.Generator().manual_seed(1)
    image_embed = torch.randn(1, 256, 64, 64, generator=gen)
    points, labels, box = PROMPTS[prompt]
    mask = torch.randn(1, 1, 256, 256, generator=gen) if with_mask else None
    with torch.inference_mode():
        sparse, dense = pe(
            points=None if points is None else (torch.tensor([points]), torch.tensor([labels])),
            boxes=None if box is None else torch.tensor([box]), masks=mask)
        want_masks, want_iou = md.predict_masks(image_embed, pe.get_dense_pe(), sparse, dense)
        coords, labs = pack_sam_points(None if points is None else np.array(points),
                                       None if labels is None else np.array(labels),
                                       None if box is None else np.array(box))
        got_masks, got_iou = graph(image_embed, dense, torch.from_numpy(coords), torch.from_numpy(labs))
    assert got_masks.shape == want_masks.shape == (1, 4, 256, 256)
    scale = float(want_masks.abs().max())
    assert float((got_masks - want_masks).abs().max()) <= 1e-4 * max(1.0, scale)
    assert float((got_iou - want_iou).abs().max()) <= 1e-5


def test_an_upscaling_the_rewrite_does_not_cover_is_refused(sam_parts):
    """A decoder whose upscaling is not two 2 x 2 stride-2 transposed convolutions is not exported (the CPU backend
    then falls back to torch) rather than exported wrongly."""
    import copy

    from SAMSegmentLib.backends.graphs import sam_prompt_decoder_specs

    pe, md = sam_parts
    other = copy.deepcopy(md)
    other.output_upscaling[0] = torch.nn.ConvTranspose2d(256, 64, kernel_size=4, stride=2, padding=1)
    with pytest.raises(ValueError, match="upscaling"):
        sam_prompt_decoder_specs(pe, other)
