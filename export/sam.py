"""Export recipe for the SAM family: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` and ``mobile_sam``.

Four graphs, the same for every variant:

``encoder``
    ``image`` (1, 3, 1024, 1024) float32, normalised and zero-padded by :func:`fastseg.sam.preprocess`
    -> ``image_embeddings`` (1, 256, 64, 64).
``decoder``
    prompt encoder + mask decoder, without mask selection and without upscaling.
    ``image_embeddings`` (1, 256, 64, 64), ``point_coords`` (B, N, 2) float32 in the 1024-input frame,
    ``point_labels`` (B, N) float32 (1 foreground, 0 background, 2 / 3 box corners, -1 padding),
    ``mask_input`` (1 or B, 1, 256, 256), ``has_mask_input`` (1,) float32
    -> ``low_res_masks`` (B, 4, 256, 256) logits and ``iou_predictions`` (B, 4).
    All four masks come out so the runtime reproduces ``multimask_output`` (masks 1..3, or mask 0).
    The runtime uses it for prompts with a mask input.
``decoder_image``
    the image-only start of the mask decoder, run once per image (without a mask input the image
    side of the first transformer block does not depend on the prompt):
    ``image_embeddings`` -> ``image_keys`` (1, 4096, 256), ``token_keys``, ``token_values``,
    ``image_queries`` (1, 4096, 128).
``decoder_points``
    the rest of the decoder for prompts without a mask input (every click of a labelling tool, and
    everything mode): ``decoder_image``'s four outputs, ``point_coords``, ``point_labels`` -> the
    same ``low_res_masks`` and ``iou_predictions`` as ``decoder``.

The runtime (:mod:`fastseg.sam`) builds the point array the way ``segment_anything`` does (points,
then a padding point only when there is no box, then the two corners of the box), so the graph
takes points and nothing else. Mask upscaling stays in numpy; see :class:`fastseg.sam.UpscalePlan`
for the measurements behind that choice.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastseg.registry import ModelSpec
from fastseg_export.common import (
    Graph,
    atomic_torch_save,
    load_checked,
    load_state_dict,
)
from fastseg_export.errors import CheckpointError
from fastseg_export.references import SAM_ARCH

#: ``segment_anything`` / ``mobile_sam`` registry key of each fastseg model name.

#: Scale applied to the last layer of each hypernetwork MLP of a random-weight mask decoder, so its
#: logits are as decisive as a trained model's (std ~1.4 instead of ~0.05; shared REFERENCE.md).
HYPERNETWORK_SCALE = 30.0

EMBED_DIM = 256
EMBED_SIZE = 64
LOW_RES_SIZE = 256


def _registry(spec: ModelSpec) -> dict[str, Any]:
    if spec.name not in SAM_ARCH:
        raise ValueError(f"{spec.name!r} is not a SAM-family model; expected one of {sorted(SAM_ARCH)}")
    if spec.name == "mobile_sam":
        with warnings.catch_warnings():
            # On import mobile_sam re-registers TinyViT names in timm's registry (UserWarning) through
            # timm's deprecated module paths (FutureWarning): noise about a third-party package.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    return sam_model_registry


def build_model(spec: ModelSpec) -> nn.Module:
    """The official architecture of ``spec`` with its default (random) initialisation, no weights loaded."""
    model = _registry(spec)[SAM_ARCH[spec.name]](checkpoint=None)
    return model.float()


def load_model(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    """Build the official model and load ``checkpoint`` (a state dict) into it, safely.

    The official builders call a bare ``torch.load``; here the file is read with
    ``weights_only=True`` and its keys and shapes are compared with the architecture first, so a
    ViT-B checkpoint given as ``mobile_sam`` (or ViT-L given as ViT-B) raises a ``CheckpointError``
    naming the mismatch instead of a half-loaded model.
    """
    checkpoint = Path(checkpoint)
    state = load_state_dict(checkpoint)
    return load_checked(build_model(spec), state, f"{spec.name} ({spec.checkpoint_format})", checkpoint)


def write_random_checkpoint(spec: ModelSpec, path: Path, seed: int) -> None:
    """Write a seeded random-weight checkpoint of ``spec`` in the official format (a state dict).

    The real architecture's default initialisation, with two changes so that tests on it are not
    vacuous (shared REFERENCE.md): the last layer of every ``output_hypernetworks_mlps[i]`` is scaled
    by :data:`HYPERNETWORK_SCALE`, giving decisive mask logits like a trained model's, and TinyViT's
    ``attention_biases`` (zeros at init, non-zero once trained) get N(0, 1) values, so a stale
    attention-bias cache would show. Same seed, same bytes; written atomically.
    """
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
        with torch.no_grad():
            for mlp in model.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(HYPERNETWORK_SCALE)
                mlp.layers[-1].bias.mul_(HYPERNETWORK_SCALE)
            for name, param in model.named_parameters():
                if name.endswith("attention_biases"):
                    param.normal_(0.0, 1.0)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)


class SamEncoder(nn.Module):
    """``image`` (1, 3, 1024, 1024) normalised and padded -> ``image_embeddings`` (1, 256, 64, 64)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamDecoder(nn.Module):
    """Prompt encoder + mask decoder, all four masks, for any number B of prompt sets.

    The points are embedded as ``PromptEncoder._embed_points`` / ``_embed_boxes`` do: shift by
    +0.5 to the pixel centre, random-Fourier positional encoding, then ``not_a_point_embed`` instead
    of it for label -1 and ``point_embeddings[i]`` added for label i (0, 1 points; 2, 3 box corners).
    Selections use ``torch.where``, so each embedding is the very sum the original computes (up to
    float32 rounding of the Fourier features, which depends on the matmul's shape).

    The image side is computed once for all B prompt sets (see :meth:`predict_masks`) and
    ``mask_input`` may have batch 1 (shared by every set) or B, as ``PromptEncoder`` allows.

    Two rewrites that keep every output (the same sums in another order) and remove most of the work
    that scales with the 4096 image tokens: the cross-attentions project the few tokens instead of
    the image (:func:`attend_tokens_to_image`, :func:`attend_image_to_tokens`), and the mask
    upscaling runs channels-last as matrix products (:meth:`masks_channels_last`). What each rewrite
    saves is in docs/PERFORMANCE.md.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._take(model.prompt_encoder, model.mask_decoder)

    def _take(self, pe: nn.Module, mask_decoder: nn.Module) -> None:
        """The prompt encoder's and mask decoder's parts (``sam2``'s have the same names)."""
        self.pe_layer = pe.pe_layer
        self.point_embeddings = pe.point_embeddings
        self.not_a_point_embed = pe.not_a_point_embed
        self.mask_downscaling = pe.mask_downscaling
        self.no_mask_embed = pe.no_mask_embed
        self.input_h, self.input_w = pe.input_image_size
        self.mask_decoder = mask_decoder
        image_pe = pe.get_dense_pe().detach().clone()  # (1, 256, 64, 64)
        self.register_buffer("image_pe_flat", image_pe.flatten(2).permute(0, 2, 1).contiguous(), persistent=False)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        coords = coords + 0.5
        x = coords[..., 0:1] / self.input_w
        y = coords[..., 1:2] / self.input_h
        pe = self.pe_layer._pe_encoding(torch.cat([x, y], dim=-1))  # (B, N, 256)
        labels = labels.unsqueeze(-1)
        out = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        for i, embedding in enumerate(self.point_embeddings):
            out = torch.where(labels == i, pe + embedding.weight, out)
        return out

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        dense = has_mask_input * self.mask_downscaling(mask_input)
        return dense + (1 - has_mask_input) * self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        return self.predict_masks(image_embeddings, sparse, dense)

    def transformer(self, image_embedding: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayTransformer.forward`` with the image side flattened by one NCHW -> NHWC transpose.

        The original's ``flatten(2).permute(0, 2, 1)`` became two slow 3-D transposes in OpenVINO (one
        per consumer); a 4-D (0, 2, 3, 1) transpose is done once. The positional
        encoding is constant and enters pre-flattened.
        """
        t = self.mask_decoder.transformer
        keys = flatten_image(image_embedding)
        queries = tokens
        for layer in t.layers:
            queries, keys = two_way_block(layer, queries, keys, tokens, self.image_pe_flat)
        return self.final_attention(queries, keys, tokens), keys

    def transformer_from_image_side(
        self,
        image_keys: torch.Tensor,
        token_keys: torch.Tensor,
        token_values: torch.Tensor,
        image_queries: torch.Tensor,
        tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`SamDecoder.transformer` with the first block's image side from ``decoder_image``."""
        t = self.mask_decoder.transformer
        image_side = (token_keys, token_values, image_queries)
        queries, keys = two_way_block(t.layers[0], tokens, image_keys, tokens, self.image_pe_flat, image_side)
        for layer in t.layers[1:]:
            queries, keys = two_way_block(layer, queries, keys, tokens, self.image_pe_flat)
        return self.final_attention(queries, keys, tokens), keys

    def first_image_side(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``decoder_image``'s outputs (:data:`DECODER_IMAGE_OUTPUTS`): the flattened image with
        ``no_mask_embed`` added and the first block's three image-side projections split per head."""
        keys = flatten_image(image_embeddings + self.no_mask_embed.weight.reshape(1, -1, 1, 1))
        first = self.mask_decoder.transformer.layers[0]
        to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        keys_pe = keys + self.image_pe_flat
        return (
            keys,
            split_heads(to_image.k_proj(keys_pe), to_image.num_heads, keys_last=True),
            split_heads(to_image.v_proj(keys), to_image.num_heads, keys_last=False),
            split_heads(to_tokens.q_proj(keys_pe), to_tokens.num_heads, keys_last=True),
        )

    def final_attention(self, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = self.mask_decoder.transformer
        keys_pe = keys + self.image_pe_flat
        attn_out = attend_tokens_to_image(t.final_attn_token_to_image, queries + tokens, keys_pe, keys)
        return t.norm_final_attn(queries + attn_out)

    def output_tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """The IoU and mask tokens followed by the prompt tokens, ``(B, 5 + N, 256)``."""
        dec = self.mask_decoder
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse), dim=1)

    def heads(self, hs: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks`` after the transformer: mask upscaling, hypernetworks, IoU head."""
        dec = self.mask_decoder
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + dec.num_mask_tokens), :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        return self.masks_channels_last(keys, hyper_in), dec.iou_prediction_head(iou_token_out)

    def masks_channels_last(self, keys: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """``hyper_in @ output_upscaling(image)`` computed on the channels-last image ``keys`` ``(B, 4096, 256)``.

        ``output_upscaling`` is ConvTranspose2d(k=2, s=2) -> LayerNorm2d -> GELU -> ConvTranspose2d(k=2, s=2)
        -> GELU. A stride-2, 2x2 transposed convolution maps each pixel to its own 2x2 block:
        ``out[o, 2y+i, 2x+j] = b[o] + sum_c in[c, y, x] W[c, o, i, j]``, a matrix product per pixel. So the
        whole chain runs on ``(pixels, channels)`` matrices (two products, a last-axis layer norm and the
        GELUs, each element computed as the original computes it), sub-pixels in (i, j) order, and only
        the ``(B, M, 256, 256)`` masks are permuted into image order at the end. The NCHW original
        transposes the 4096 x 256 image into the convolution's layout first.
        """
        conv1, norm, act1, conv2, act2 = self.mask_decoder.output_upscaling
        batch = keys.shape[0]
        c0, c1 = conv1.weight.shape[:2]
        c2 = conv2.weight.shape[1]
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c0, 4 * c1)  # columns in (i, j, out channel) order
        x = (keys @ w1 + conv1.bias.repeat(4)).reshape(batch, -1, c1)  # (B, 4096 * 4, c1)
        x = act1(torch.nn.functional.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = act2((x @ w2 + conv2.bias.repeat(4)).reshape(batch, -1, c2))  # (B, 4096 * 16, c2)
        masks = x @ hyper_in.transpose(1, 2)  # (B, pixels, M), pixels in (y, x, i, j, i2, j2) order
        m, n = masks.shape[2], EMBED_SIZE
        masks = masks.reshape(batch, n, n, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, m, 4 * n, 4 * n)

    def predict_masks(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks`` without its ``repeat_interleave`` of the image embedding.

        The original copies the (1, 256, 64, 64) embedding and positional encoding B times before
        the transformer. Every operation of the transformer broadcasts over the batch, so here the
        image side enters with batch 1 and becomes batch B at the first image-to-token attention:
        the same arithmetic per prompt set, without B copies (whose dynamic ``Tile`` took ~10% of
        the decoder's time in OpenVINO) and with the image-side projections of the first block
        computed once instead of B times.
        """
        hs, keys = self.transformer(image_embeddings + dense, self.output_tokens(sparse))
        return self.heads(hs, keys)


def flatten_image(image: torch.Tensor) -> torch.Tensor:
    """``(1, C, H, W)`` -> ``(1, H * W, C)``, as ``flatten(2).permute(0, 2, 1)``."""
    return image.permute(0, 2, 3, 1).reshape(image.shape[0], -1, image.shape[1])


def split_heads(x: torch.Tensor, heads: int, keys_last: bool) -> torch.Tensor:
    """A projected ``(1, N, I)`` image side split per head: ``(1, H, d, N)`` if ``keys_last`` (a key or
    query transposed for a product with the tokens), else ``(1, H, N, d)``. ``decoder_image`` returns
    them so, so the click graph does not transpose the 4096-long arrays on every click."""
    b, n, inner = x.shape
    split = x.reshape(b, n, heads, inner // heads)
    return split.permute(0, 2, 3, 1) if keys_last else split.permute(0, 2, 1, 3)


def attend_split(attention: nn.Module, q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``segment_anything``'s ``Attention.forward`` from its projected ``q`` ``(B, T, I)`` and the keys and
    values already projected and split per head by :func:`split_heads` (``k_t``: ``(1, H, d, N)``, ``v``:
    ``(1, H, N, d)``): heads, scaled dot product, softmax, output projection, the same operations in
    the same order."""
    heads = attention.num_heads
    b, t, inner = q.shape
    q_heads = q.reshape(b, t, heads, inner // heads).transpose(1, 2)  # (B, H, T, d)
    attn = q_heads @ k_t
    attn = attn / math.sqrt(q_heads.shape[-1])
    out = torch.softmax(attn, dim=-1) @ v
    return attention.out_proj(out.transpose(1, 2).reshape(b, t, inner))


def _per_head(linear: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as ``(heads, d, C)`` and bias as ``(heads, d)`` (``d`` = its width per head)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(heads, out_dim // heads, in_dim), linear.bias.reshape(heads, out_dim // heads)


def attend_tokens_to_image(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention(q=q, k=k, v=v)`` for T token queries ``(B, T, C)`` over N image keys / values ``(1 or B, N, C)``,
    with the image-side projections folded into the token side.

    Per head ``h``: ``q_h . (Wk_h x + bk_h) = (Wk_h^T q_h) . x + q_h . bk_h``; the last term is the same for every
    key, so softmax removes it. And ``sum_n a_n (Wv_h x_n + bv_h) = Wv_h (sum_n a_n x_n) + bv_h`` since the
    weights ``a`` sum to 1. So the N x C image is never projected (2 N C I multiply-adds); scores and
    mixing cost 2 N C H T instead: less while T < I / H (= 16 tokens for SAM's 128-wide, 8-head
    cross-attention; a click has 7, a box 8).
    """
    heads = attention.num_heads
    qp = attention.q_proj(q)
    b, t, inner = qp.shape
    d = inner // heads
    wk, _ = _per_head(attention.k_proj, heads)  # (H, d, C)
    wv, bv = _per_head(attention.v_proj, heads)
    q_heads = qp.reshape(b, t, heads, d).transpose(1, 2)  # (B, H, T, d)
    qk = (q_heads @ wk) / math.sqrt(d)  # (B, H, T, C): the query seen in image space
    scores = qk.reshape(b, heads * t, -1) @ k.transpose(1, 2)  # (B, H*T, N)
    mixed = torch.softmax(scores, dim=-1) @ v  # (B, H*T, C)
    out = mixed.reshape(b, heads, t, -1) @ wv.transpose(1, 2) + bv[:, None, :]  # (B, H, T, d)
    return attention.out_proj(out.transpose(1, 2).reshape(b, t, inner))


def attend_image_to_tokens(
    attention: nn.Module,
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    projected_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attention(q=q, k=k, v=v)`` for N image queries ``(1 or B, N, C)`` over T token keys / values ``(B, T, C)``,
    with the image-side projections folded into the token side.

    Scores: ``(Wq_h x + bq_h) . k_h = x . (Wq_h^T k_h) + bq_h . k_h`` (a ``(T, C)`` matrix and a ``(T,)`` row per
    head instead of projecting the N x C queries), or from ``projected_q`` (``q_proj(q)`` split by
    :func:`split_heads` into ``(1, H, d, N)``, computed once per image by ``decoder_image``). Output:
    ``out_proj(concat_h a_h v_h) = sum_h a_h (v_h Wo_h^T) + bo``, a ``(T, C)`` matrix per head instead of
    projecting the N x I mixture.
    """
    heads = attention.num_heads
    kp, vp = attention.k_proj(k), attention.v_proj(v)
    b, t, inner = kp.shape
    d = inner // heads
    k_heads = kp.reshape(b, t, heads, d).transpose(1, 2)  # (B, H, T, d)
    v_heads = vp.reshape(b, t, heads, d).transpose(1, 2)
    if projected_q is None:
        assert q is not None
        wq, bq = _per_head(attention.q_proj, heads)  # (H, d, C), (H, d)
        image_side = (k_heads @ wq) / math.sqrt(d)  # (B, H, T, C)
        offset = (k_heads @ bq[:, :, None]) / math.sqrt(d)  # (B, H, T, 1)
        scores = image_side.reshape(b, heads * t, -1) @ q.transpose(1, 2)  # (B, H*T, N)
        scores = scores.reshape(b, heads, t, -1) + offset
    else:
        scores = k_heads @ projected_q / math.sqrt(d)  # (B, H, T, N)
    # the tokens' axis is not the last: a softmax over the 8 heads x T tokens of each of the N image
    # queries runs over rows of T (< 10) numbers, which OpenVINO does ~3x slower than over the
    # contiguous image axis (docs/PERFORMANCE.md)
    attn = torch.softmax(scores, dim=2).reshape(b, heads * t, -1)  # (B, H*T, N)
    out_dim = attention.out_proj.weight.shape[0]
    wo = attention.out_proj.weight.reshape(out_dim, heads, d).permute(1, 2, 0)  # (H, d, C)
    token_side = (v_heads @ wo).reshape(b, heads * t, out_dim)  # (B, H*T, C)
    return attn.transpose(1, 2) @ token_side + attention.out_proj.bias


def two_way_block(
    layer: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    tokens: torch.Tensor,
    key_pe: torch.Tensor,
    image_side: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` with both cross-attentions folded (see :func:`attend_tokens_to_image`).

    ``image_side``: ``(token_keys, token_values, image_queries)``, the first block's image-side
    projections computed once per image (``decoder_image``) and split per head (:func:`split_heads`),
    used instead of projecting ``keys``.
    """
    if layer.skip_first_layer_pe:
        queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
    else:
        q = queries + tokens
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    to_image = layer.cross_attn_token_to_image
    if image_side is None:
        keys_pe = keys + key_pe
        attn_out = attend_tokens_to_image(to_image, queries + tokens, keys_pe, keys)
    else:
        keys_pe = None
        attn_out = attend_split(to_image, to_image.q_proj(queries + tokens), image_side[0], image_side[1])
    queries = layer.norm2(queries + attn_out)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + tokens
    to_tokens = layer.cross_attn_image_to_token
    if image_side is None:
        attn_out = attend_image_to_tokens(to_tokens, keys_pe, q, queries)
    else:
        attn_out = attend_image_to_tokens(to_tokens, None, q, queries, projected_q=image_side[2])
    return queries, layer.norm4(keys + attn_out)


class SamDecoderImage(SamDecoder):
    """The image-only start of the decoder for prompts without a mask input, once per image.

    Without a mask input the dense embedding is ``no_mask_embed`` everywhere, so the image side of
    the first transformer block (the flattened image, the keys and values its tokens attend to, and
    the queries of its image-to-token attention: three 4096 x 256 x 128 projections, split per head
    in the layout the click graph multiplies them in) is fixed by the image. :class:`SamPointDecoder`
    takes them as inputs, so a click does not compute them.
    """

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.first_image_side(image_embeddings)


class SamPointDecoder(SamDecoder):
    """The decoder after :class:`SamDecoderImage`, for any number B of prompt sets without a mask input.

    The first ``TwoWayAttentionBlock`` (``skip_first_layer_pe``) is written out with the image-side
    projections taken from the inputs; the rest is :class:`SamDecoder`'s.
    """

    def forward(
        self,
        image_keys: torch.Tensor,
        token_keys: torch.Tensor,
        token_values: torch.Tensor,
        image_queries: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.output_tokens(self.embed_points(point_coords, point_labels))
        hs, keys = self.transformer_from_image_side(image_keys, token_keys, token_values, image_queries, tokens)
        return self.heads(hs, keys)


#: Outputs of ``decoder_image``, inputs (with the prompt) of ``decoder_points``.
DECODER_IMAGE_OUTPUTS = ["image_keys", "token_keys", "token_values", "image_queries"]
_PROMPT_AXES = {
    "point_coords": {0: "batch", 1: "num_points"},
    "point_labels": {0: "batch", 1: "num_points"},
    "low_res_masks": {0: "batch"},
    "iou_predictions": {0: "batch"},
}


def graphs(model: nn.Module, spec: ModelSpec) -> list[Graph]:
    size = spec.input_size
    encoder = Graph(
        name="encoder",
        module=SamEncoder(model).eval(),
        example_inputs=(torch.zeros(1, 3, size, size),),
        input_names=["image"],
        output_names=["image_embeddings"],
    )
    # Trace with B = 2 prompt sets of N = 3 points so neither dimension is specialised to 1.
    gen = torch.Generator().manual_seed(0)
    decoder = Graph(
        name="decoder",
        module=SamDecoder(model).eval(),
        example_inputs=(
            torch.randn(1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * size,
            torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]]),
            torch.randn(2, 1, LOW_RES_SIZE, LOW_RES_SIZE, generator=gen),
            torch.ones(1),
        ),
        input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={**_PROMPT_AXES, "mask_input": {0: "mask_batch"}},
    )
    decoder_image = Graph(
        name="decoder_image",
        module=SamDecoderImage(model).eval(),
        example_inputs=(torch.randn(1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE, generator=gen),),
        input_names=["image_embeddings"],
        output_names=DECODER_IMAGE_OUTPUTS,
    )
    with torch.no_grad():
        image_side = decoder_image.module(*decoder_image.example_inputs)
    decoder_points = Graph(
        name="decoder_points",
        module=SamPointDecoder(model).eval(),
        example_inputs=(*image_side, *decoder.example_inputs[1:3]),
        input_names=[*DECODER_IMAGE_OUTPUTS, "point_coords", "point_labels"],
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes=_PROMPT_AXES,
    )
    return [encoder, decoder, decoder_image, decoder_points]


def manifest_extra(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    return {
        "embedding_shape": [EMBED_DIM, EMBED_SIZE, EMBED_SIZE],
        "low_res_size": LOW_RES_SIZE,
        "num_mask_outputs": int(model.mask_decoder.num_mask_tokens),
    }


def check_prompt_sets(
    build_prompt_arrays: Callable[..., tuple[np.ndarray, np.ndarray]], size: tuple[int, int], input_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two prompt sets a decoder self-check runs, laid out by the runtime's ``build_prompt_arrays``:
    one foreground point (padded with label -1 to the other set's length) and two points plus a box.
    Returns ``(one_xy, one_labels, set_xy, set_labels)``."""
    h, w = size
    points = np.array([[0.5 * w, 0.5 * h], [0.3 * w, 0.6 * h]], dtype=np.float32)
    box = np.array([[0.2 * w, 0.25 * h, 0.8 * w, 0.75 * h]], dtype=np.float32)
    one_xy, one_labels = build_prompt_arrays(points[:1], np.array([1]), None, (h, w), input_size)
    set_xy, set_labels = build_prompt_arrays(points, np.array([1, 0]), box, (h, w), input_size)
    pad = set_xy.shape[1] - one_xy.shape[1]
    one_xy = np.concatenate([one_xy, np.zeros((1, pad, 2), np.float32)], axis=1)
    one_labels = np.concatenate([one_labels, np.full((1, pad), -1.0, np.float32)], axis=1)
    return one_xy, one_labels, set_xy, set_labels


def check_inputs(
    model: nn.Module,
    spec: ModelSpec,
    image: np.ndarray,
    known_outputs: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of each graph computed from a real photo with the runtime's own preprocessing.

    The PyTorch encoder's output on the photo is computed here (the decoders need it) and, when
    ``known_outputs`` is given, stored there as the ``encoder`` graph's reference, so the export does
    not run the encoder a second time (the encoder is most of an export's time).

    The decoder gets the PyTorch encoder's embedding of the photo and two prompt sets in one batch,
    laid out by :func:`fastseg.sam.build_prompt_arrays` as the runtime does: one foreground point
    (its padding point repeated to the length of the other set) and two points plus a box. The mask
    input is PyTorch's own low-resolution answer to the first set, so the mask path is checked with
    realistic logits rather than multiplied by zero.
    """
    from fastseg import sam as rt

    tensor, _ = rt.preprocess(image, spec)
    with torch.no_grad():
        embedding = SamEncoder(model).eval()(torch.from_numpy(tensor)).numpy()
    if known_outputs is not None:
        known_outputs["encoder"] = {"image_embeddings": embedding.copy()}
    one_xy, one_labels, set_xy, set_labels = check_prompt_sets(
        rt.build_prompt_arrays, image.shape[:2], spec.input_size
    )
    decoder = SamDecoder(model).eval()
    no_mask = torch.zeros(1, 1, LOW_RES_SIZE, LOW_RES_SIZE)
    with torch.no_grad():
        low_res, _ = decoder(
            torch.from_numpy(embedding), torch.from_numpy(one_xy), torch.from_numpy(one_labels), no_mask, torch.zeros(1)
        )
        image_side = SamDecoderImage(model).eval()(torch.from_numpy(embedding))
    return {
        "encoder": {"image": tensor},
        "decoder": {
            "image_embeddings": embedding,
            "point_coords": np.concatenate([one_xy, set_xy]),
            "point_labels": np.concatenate([one_labels, set_labels]),
            "mask_input": low_res[:, :1].numpy().copy(),
            "has_mask_input": np.ones(1, np.float32),
        },
        "decoder_image": {"image_embeddings": embedding},
        "decoder_points": {
            **{name: t.numpy().copy() for name, t in zip(DECODER_IMAGE_OUTPUTS, image_side)},
            "point_coords": np.concatenate([one_xy, set_xy]),
            "point_labels": np.concatenate([one_labels, set_labels]),
        },
    }


__all__ = [
    "CheckpointError",
    "HYPERNETWORK_SCALE",
    "DECODER_IMAGE_OUTPUTS",
    "SamDecoder",
    "SamDecoderImage",
    "SamEncoder",
    "SamPointDecoder",
    "build_model",
    "check_inputs",
    "check_prompt_sets",
    "graphs",
    "load_model",
    "manifest_extra",
    "write_random_checkpoint",
]
