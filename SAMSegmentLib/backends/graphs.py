"""The torch graphs an exported runtime runs: fixed-signature modules around the model families' own parts.

Each graph takes and returns plain float32 tensors (no Python-side branching on the inputs), so that a tracing
exporter captures it whole. The numerics are those of the wrapped modules; where a graph replaces a branch of the
original code by arithmetic (a mask flag, label comparisons), the arithmetic is exact for the values it sees;
where it reassociates products (the decoder's cross attentions, its upscaling), it equals them up to float rounding.

- ``image_encoder``: the family's image encoder on its fixed input frame.
- ``prompt_decoder`` (SAM and LiteMedSAM): segment_anything's prompt encoder for points and boxes and its mask
  decoder, for any number of prompt points.
  Points and box corners are packed by :func:`pack_sam_points`.
- ``sam2_image_encoder``: ``SAM2Base.forward_image`` (Hiera trunk, FPN neck, the decoder's two high-resolution
  projections), returning the FPN levels then their position encodings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

NOT_A_POINT = -1.0  # segment_anything's label of the padding point
BOX_CORNER_LABELS = (2.0, 3.0)  # its labels of a box's top-left and bottom-right corners


@dataclass
class GraphSpec:
    """What to export: ``module`` with ``example_inputs``; ``inputs`` names each input with its shape (-1 where the
    size varies between calls); ``outputs`` names the outputs in order."""

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    inputs: list[tuple[str, list[int]]]
    outputs: list[str]
    shape_key: dict = field(default_factory=dict)  # what else the export depends on (image size, ...)


def pack_sam_points(
    points_xy: np.ndarray | None, labels: np.ndarray | None, box_xyxy: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt points as segment_anything's prompt encoder orders them: clicks, then the box's two corners, or a
    padding point (label -1) when there is no box. Model-input pixel (x, y); returns float32 [1, N, 2] and [1, N]."""
    coords: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if points_xy is not None and len(points_xy):
        coords.append(np.asarray(points_xy, dtype=np.float32).reshape(-1, 2))
        labs.append(np.asarray(labels, dtype=np.float32).reshape(-1))
    if box_xyxy is not None:
        coords.append(np.asarray(box_xyxy, dtype=np.float32).reshape(2, 2))
        labs.append(np.array(BOX_CORNER_LABELS, dtype=np.float32))
    elif coords:
        coords.append(np.zeros((1, 2), dtype=np.float32))
        labs.append(np.array([NOT_A_POINT], dtype=np.float32))
    if not coords:
        raise ValueError("a prompt needs points or a box")
    return np.concatenate(coords)[None], np.concatenate(labs)[None]


def _embed_sparse(prompt_encoder: torch.nn.Module, coord_scale: torch.Tensor, point_coords, point_labels):
    """``PromptEncoder._embed_points`` / ``_embed_boxes`` for packed points: +0.5 pixel shift, normalise by the input
    size, Fourier features; padding points get ``not_a_point_embed``, labels 0..3 their ``point_embeddings``."""
    pe = prompt_encoder
    sparse = pe.pe_layer._pe_encoding((point_coords + 0.5) * coord_scale)
    labels = point_labels[..., None]
    is_pad = (labels == NOT_A_POINT).to(sparse.dtype)
    sparse = sparse * (1.0 - is_pad) + pe.not_a_point_embed.weight * is_pad
    for i in range(pe.num_point_embeddings):
        sparse = sparse + pe.point_embeddings[i].weight * (labels == float(i)).to(sparse.dtype)
    return sparse


def _heads_weight(linear: torch.nn.Linear, heads: int) -> torch.Tensor:
    """A projection's weight [heads * d, C] as [heads, d, C]."""
    w = linear.weight
    return w.reshape(heads, w.shape[0] // heads, w.shape[1])


def _tokens_attend_to_image(attn: torch.nn.Module, q_tokens: torch.Tensor, image: torch.Tensor,
                            image_pe: torch.Tensor) -> torch.Tensor:
    """segment_anything ``Attention(q=q_tokens, k=image + image_pe, v=image)`` for few tokens [1, N, C] and many
    image tokens [1, HW, C], reassociated so that nothing of size HW x C / 2 is projected:
    scores_h = (q_h W_k,h) (image + pe)^T (the key bias adds one constant per query row, which the softmax
    drops), out_h = (softmax_h image) W_v,h^T + b_v,h (softmax rows sum to 1). Same arithmetic up to rounding,
    about half the multiply-adds of projecting the image."""
    heads = attn.num_heads
    n = q_tokens.shape[1]
    q = attn.q_proj(q_tokens)
    d = q.shape[-1] // heads
    qh = q.reshape(1, n, heads, d).transpose(1, 2)  # [1, h, N, d]
    qk = (qh @ _heads_weight(attn.k_proj, heads)).reshape(1, heads * n, -1)  # [1, hN, C]
    scores = (qk @ (image + image_pe).transpose(1, 2)).reshape(1, heads, n, -1)  # [1, h, N, HW]
    weights = torch.softmax(scores / math.sqrt(d), dim=-1).reshape(1, heads * n, -1)
    pooled = (weights @ image).reshape(1, heads, n, -1)  # [1, h, N, C]
    wv = _heads_weight(attn.v_proj, heads)  # [h, d, C]
    out = pooled @ wv.transpose(1, 2) + attn.v_proj.bias.reshape(heads, 1, d)  # [1, h, N, d]
    return attn.out_proj(out.transpose(1, 2).reshape(1, n, heads * d))


def _image_attends_to_tokens(attn: torch.nn.Module, q_input: torch.Tensor, k_tokens: torch.Tensor,
                             v_tokens: torch.Tensor) -> torch.Tensor:
    """segment_anything ``Attention(q=q_input, k=k_tokens, v=v_tokens)`` for many image queries [1, HW, C]
    and few tokens [1, N, C], reassociated:
    scores = q_input (W_q,h^T k_h^T) + b_q,h k_h^T, and the output projection folded into the tokens' values,
    out = sum_h softmax_h (v_h W_o,h^T + b_o / h), so that nothing of size HW x C / 2 is projected."""
    heads = attn.num_heads
    n = k_tokens.shape[1]
    kh = attn.k_proj(k_tokens)
    d = kh.shape[-1] // heads
    kh = kh.reshape(1, n, heads, d).transpose(1, 2)  # [1, h, N, d]
    hw = q_input.shape[1]
    wq = _heads_weight(attn.q_proj, heads)  # [h, d, C]
    kq = (wq.transpose(1, 2) @ kh.transpose(2, 3))  # [1, h, C, N]
    kq = kq.permute(0, 2, 1, 3).reshape(1, -1, heads * n)  # [1, C, hN]
    bias = (attn.q_proj.bias.reshape(heads, 1, d) @ kh.transpose(2, 3)).reshape(1, 1, heads * n)
    scores = (q_input @ kq + bias).reshape(1, hw, heads, n).permute(0, 2, 1, 3)  # [1, h, HW, N]
    weights = torch.softmax(scores / math.sqrt(d), dim=-1)  # [1, h, HW, N]
    vh = attn.v_proj(v_tokens).reshape(1, n, heads, d).transpose(1, 2)  # [1, h, N, d]
    wo = attn.out_proj.weight.reshape(-1, heads, d).permute(1, 2, 0)  # [h, d, C]
    # the output bias rides on the values: each head's softmax row sums to 1, so the hN weights sum to h (an
    # added bias after this product made OpenVINO's bf16 CPU compile fail: "data.size() == OC")
    vo = (vh @ wo + attn.out_proj.bias / heads).reshape(1, heads * n, -1)  # [1, hN, C]
    weights = weights.permute(0, 2, 1, 3).reshape(1, hw, heads * n)  # [1, HW, hN]
    return weights @ vo


def _two_way_block(layer: torch.nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                   key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything ``TwoWayAttentionBlock.forward`` with the reassociated cross attentions."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + _tokens_attend_to_image(layer.cross_attn_token_to_image, queries + query_pe,
                                                            keys, key_pe))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + _image_attends_to_tokens(layer.cross_attn_image_to_token, keys + key_pe, q,
                                                       queries))
    return queries, keys


def _upscaled_masks(upscaling: torch.nn.Sequential, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
                    ) -> torch.Tensor:
    """``hyper_in @ output_upscaling(keys as [1, C, h, w])`` of segment_anything's ``MaskDecoder``: masks
    [1, M, 4h, 4w] from image tokens [1, hw, C] and hypernetwork outputs [1, M, C / 8].

    The two transposed convolutions (2 x 2 kernel, stride 2: every input pixel makes its own 2 x 2 output block)
    are written as per-pixel matrix products on the token layout, with ``LayerNorm2d`` over the channels and the
    activations in between, and the pixels put in image order only in the final masks: the same arithmetic
    without the image's layout changes (the reorders around the convolutions took 2.9 ms of OpenVINO's fp32
    decode)."""
    up1, norm, act1, up2, act2 = upscaling
    c1, c2 = up1.out_channels, up2.out_channels
    w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * c1)  # [C, (i, j, o)]
    x = (keys @ w1 + up1.bias.repeat(4)).reshape(1, 4 * h * w, c1)  # rows (y, x, i, j)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    x = act1((x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
    w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = act2(x @ w2 + up2.bias.repeat(4)).reshape(1, 16 * h * w, c2)  # rows (y, x, i, j, i2, j2)
    m = hyper_in.shape[1]
    masks = (x @ hyper_in.transpose(1, 2)).reshape(h, w, 2, 2, 2, 2, m)
    # output row 4y + 2i + i2, column 4x + 2j + j2
    return masks.permute(6, 0, 2, 4, 1, 3, 5).reshape(1, m, 4 * h, 4 * w)


class SamDecoderPromptPart(torch.nn.Module):
    """segment_anything's ``PromptEncoder`` for points and box corners + ``MaskDecoder.predict_masks``.

    Inputs: ``image_embed`` [1, C, h, w], ``dense_embed`` [1, C, h, w] (``no_mask_embed`` broadcast, or a mask
    prompt's embedding), ``point_coords`` [1, N, 2] model-input pixel (x, y) and ``point_labels`` [1, N]
    (-1 padding, 0 exclude, 1 include, 2 / 3 box corners).
    Outputs all candidates: ``masks`` [1, 4, 256, 256] and ``iou`` [1, 4]; candidate 0 is the single-mask output,
    1..3 the multimask ones.

    The forward glue of ``TwoWayTransformer`` / ``TwoWayAttentionBlock`` / ``predict_masks`` is written out here
    (calling the modules' own layers) with the cross attentions reassociated and the upscaling as matrix
    products; tests/test_graphs.py compares the result with segment_anything's modules.
    """

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        up = list(mask_decoder.output_upscaling)
        if len(up) != 5 or any(tuple(m.kernel_size) != (2, 2) or tuple(m.stride) != (2, 2) for m in (up[0], up[3])):
            raise ValueError("the mask decoder's output upscaling is not segment_anything's two 2 x 2 stride-2 "
                             "transposed convolutions")
        h, w = prompt_encoder.input_image_size
        self.embedding_hw = tuple(int(v) for v in prompt_encoder.image_embedding_size)
        self.register_buffer("coord_scale", torch.tensor([1.0 / w, 1.0 / h], dtype=torch.float32), persistent=False)
        with torch.no_grad():
            pe = prompt_encoder.get_dense_pe().detach().clone()
        self.register_buffer("key_pe", pe.flatten(2).permute(0, 2, 1).contiguous(), persistent=False)

    def forward(self, image_embed, dense_embed, point_coords, point_labels):
        md = self.mask_decoder
        keys = (image_embed + dense_embed).flatten(2).permute(0, 2, 1)  # image tokens [1, hw, C]
        transformer = md.transformer
        sparse = _embed_sparse(self.prompt_encoder, self.coord_scale, point_coords, point_labels)
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat((output_tokens, sparse), dim=1)
        key_pe = self.key_pe
        queries = tokens
        for layer in transformer.layers:
            queries, keys = _two_way_block(layer, queries, keys, tokens, key_pe)
        attn_out = _tokens_attend_to_image(transformer.final_attn_token_to_image, queries + tokens, keys, key_pe)
        hs = transformer.norm_final_attn(queries + attn_out)

        hyper_in = torch.stack([md.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(md.num_mask_tokens)],
                               dim=1)
        masks = _upscaled_masks(md.output_upscaling, keys, hyper_in, *self.embedding_hw)
        return masks, md.iou_prediction_head(hs[:, 0, :])


def sam_prompt_decoder_specs(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> dict[str, GraphSpec]:
    """The prompt decoder graph of a SAM-family model (LiteMedSAM, SAM, MedSAM): ``prompt_decoder``.

    One graph per prompt, with nothing precomputed per embedding: the reassociated attentions never project the
    image tokens, so what a per-embedding graph could cache is one addition. Measured (LiteMedSAM, bf16): with a
    separate graph for it the first decode on a slice took 15.0 ms and the others 11.0; in one graph all take
    12.4 (fp32: first 19.6-25.6 and others 16.5 before; first 16.3-19.6 and others 16.9 after)."""
    c = int(prompt_encoder.embed_dim)
    eh, ew = (int(v) for v in prompt_encoder.image_embedding_size)
    ih, iw = (int(v) for v in prompt_encoder.input_image_size)
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, c, eh, ew, generator=gen),
        prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).expand(1, -1, eh, ew).contiguous(),
        torch.tensor([[[0.4 * iw, 0.5 * ih], [0.2 * iw, 0.2 * ih], [0.8 * iw, 0.7 * ih]]], dtype=torch.float32),
        torch.tensor([[1.0, 2.0, 3.0]]),
    )
    return {
        "prompt_decoder": GraphSpec(
            SamDecoderPromptPart(prompt_encoder, mask_decoder).eval(), inputs,
            [("image_embed", [1, c, eh, ew]), ("dense_embed", [1, c, eh, ew]), ("point_coords", [1, -1, 2]),
             ("point_labels", [1, -1])],
            ["masks", "iou"], {"embedding": [c, eh, ew], "input": [ih, iw]},
        ),
    }


def image_encoder_spec(encoder: torch.nn.Module, size: int, channels: int = 3) -> GraphSpec:
    """An image encoder on a fixed [1, channels, size, size] input."""
    x = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    return GraphSpec(encoder.eval(), (x,), [("image", [1, channels, size, size])], ["features"], {"input": size})


class Sam2ImageEncoder(torch.nn.Module):
    """``SAM2Base.forward_image`` without the position encodings: returns the FPN levels, high resolution first.

    The position encodings (``vision_pos_enc``) depend only on the levels' sizes, so they are not exported (at
    1024 px they are ~85 MB per frame): :func:`sam2_backbone_out` computes them once with the model's own module.
    """

    def __init__(self, sam2_model: torch.nn.Module) -> None:
        super().__init__()
        self.sam2_model = sam2_model

    def forward(self, image):
        return tuple(self.sam2_model.forward_image(image)["backbone_fpn"])


def sam2_image_encoder_spec(sam2_model: torch.nn.Module) -> GraphSpec:
    size = int(sam2_model.image_size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        n = len(sam2_model.forward_image(x)["backbone_fpn"])
    return GraphSpec(Sam2ImageEncoder(sam2_model).eval(), (x,), [("image", [1, 3, size, size])],
                     [f"fpn{i}" for i in range(n)], {"input": size})


def sam2_backbone_out(sam2_model: torch.nn.Module, fpn: list[torch.Tensor]) -> dict:
    """The ``backbone_out`` dict of ``forward_image`` from the graph's FPN levels.

    Position encodings come from the neck's own ``position_encoding`` module (as ``FpnNeck.forward`` computes
    them: from each level's shape only), cached per shape on the model.
    """
    cache = sam2_model.__dict__.setdefault("_exported_pos_enc", {})
    position_encoding = sam2_model.image_encoder.neck.position_encoding
    pos = []
    for f in fpn:
        key = (tuple(f.shape[-2:]), f.device, f.dtype)
        if key not in cache:
            with torch.inference_mode():
                cache[key] = position_encoding(torch.zeros(1, 1, *f.shape[-2:], device=f.device)).to(f.dtype)
        pos.append(cache[key])
    return {"vision_features": fpn[-1], "vision_pos_enc": pos, "backbone_fpn": list(fpn)}

def _no_mask_dense(prompt_encoder: torch.nn.Module) -> np.ndarray:
    """``no_mask_embed`` broadcast to [1, C, h, w] float32 (cached on the module: it is a constant)."""
    cached = getattr(prompt_encoder, "_exported_no_mask_dense", None)
    if cached is None:
        eh, ew = (int(v) for v in prompt_encoder.image_embedding_size)
        w = prompt_encoder.no_mask_embed.weight.detach().float().cpu().numpy().reshape(1, -1, 1, 1)
        cached = np.ascontiguousarray(np.broadcast_to(w, (1, w.shape[1], eh, ew)))
        prompt_encoder._exported_no_mask_dense = cached
    return cached


def run_sam_prompt_decoder(
    runners: dict,
    prompt_encoder: torch.nn.Module,
    image_embed: torch.Tensor,
    points_xy: np.ndarray | None,
    labels: np.ndarray | None,
    box_xyxy: np.ndarray | None,
    mask_input: torch.Tensor | np.ndarray | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode with the exported prompt decoder graph: model-input pixel prompts in, the selected candidates out
    (low-res logits [C, 256, 256], iou [C]; C = 3 with ``multimask``, else 1), as ``MaskDecoder.forward`` selects."""
    coords, labs = pack_sam_points(points_xy, labels, box_xyxy)
    if mask_input is None:
        dense = _no_mask_dense(prompt_encoder)
    else:
        s = 4 * int(prompt_encoder.image_embedding_size[0])
        m = torch.as_tensor(mask_input, dtype=torch.float32).reshape(1, 1, s, s)
        with torch.inference_mode():
            dense = prompt_encoder._embed_masks(m.to(prompt_encoder.no_mask_embed.weight.device)).float()
    masks, iou = runners["prompt_decoder"](image_embed, dense, coords, labs)
    sel = slice(1, None) if multimask else slice(0, 1)
    return masks[0, sel], iou[0, sel]
