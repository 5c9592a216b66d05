"""Export recipe for SAM 2.1 on images: ``sam2.1_hiera_{tiny,small,base_plus,large}`` (Meta's ``sam2``).

Four graphs:

``encoder``
    ``image`` (1, 3, 1024, 1024) float32 from :func:`fastseg.sam2.preprocess` -> ``image_embed``
    (1, 256, 64, 64) with ``no_mem_embed`` added, ``high_res_feats_0`` (1, 32, 256, 256) and
    ``high_res_feats_1`` (1, 64, 128, 128), the FPN levels ``forward_image`` projects with the mask
    decoder's ``conv_s0`` / ``conv_s1``: what ``SAM2ImagePredictor.set_image`` keeps.
``decoder``
    prompt encoder + mask decoder, all four masks, without mask selection or upscaling: the encoder's
    three outputs, ``point_coords`` (B, N, 2) in the 1024 x 1024 input frame and ``point_labels``
    (B, N) float32 as :func:`fastseg.sam2.build_prompt_arrays` lays them out (padding point
    included), ``mask_input`` (1 or B, 1, 256, 256), ``has_mask_input`` (1,) -> ``low_res_masks``
    (B, 4, 256, 256) and ``iou_predictions`` (B, 4). Used for a mask input.
``decoder_image``
    the image-only start of the decoder, once per image: the encoder's outputs -> the flattened
    embedding, the first block's image-side projections (as SAM's ``decoder_image``) and the two
    high-resolution maps in the order the channels-last upscaling adds them.
``decoder_points``
    the decoder after ``decoder_image``, for prompts without a mask input (a click, everything mode).

The decoders are SAM's rewrites (``fastseg_export.sam``) with SAM 2's object-score token and
high-resolution features; every output is the original's up to float32 rounding.

The model is built from the package's own config with ``build_sam2`` (its default post-processing
overrides, so ``dynamic_multimask_via_stability`` is on as for ``SAM2ImagePredictor``), and the
checkpoint, a dict whose ``"model"`` entry is the state dict, is read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastseg.registry import ModelSpec
from fastseg_export.common import Graph, atomic_torch_save, load_checked, load_state_dict
from fastseg_export.references import SAM2_CONFIG
from fastseg_export.sam import _PROMPT_AXES, EMBED_SIZE, SamDecoder, check_prompt_sets
from fastseg_export.sam import DECODER_IMAGE_OUTPUTS as SAM_DECODER_IMAGE_OUTPUTS

#: As for SAM (:data:`fastseg_export.sam.HYPERNETWORK_SCALE`): decisive random-weight mask logits.
HYPERNETWORK_SCALE = 30.0
LOW_RES_SIZE = 256


def build_model(spec: ModelSpec) -> nn.Module:
    """The official architecture of ``spec`` (``sam2.build_sam.build_sam2`` on its config), random init."""
    if spec.name not in SAM2_CONFIG:
        raise ValueError(f"{spec.name!r} is not a SAM 2.1 model; expected one of {sorted(SAM2_CONFIG)}")
    from sam2.build_sam import build_sam2

    return build_sam2(SAM2_CONFIG[spec.name], ckpt_path=None, device="cpu", mode="eval").float()


def load_model(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    """Build the official model and load ``checkpoint`` (``{"model": state dict}``) into it, safely."""
    checkpoint = Path(checkpoint)
    state = load_state_dict(checkpoint, entry="model")
    return load_checked(build_model(spec), state, f"{spec.name} ({spec.checkpoint_format})", checkpoint)


def write_random_checkpoint(spec: ModelSpec, path: Path, seed: int) -> None:
    """A seeded random-weight checkpoint of ``spec`` in the official format (``{"model": state dict}``),
    the hypernetworks' last layers scaled by :data:`HYPERNETWORK_SCALE`. Written atomically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
        with torch.no_grad():
            for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(HYPERNETWORK_SCALE)
                mlp.layers[-1].bias.mul_(HYPERNETWORK_SCALE)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"model": state}, Path(path))


class Sam2Encoder(nn.Module):
    """``SAM2ImagePredictor.set_image`` after the transforms: ``image`` -> the three feature maps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes = [(256, 256), (128, 128), (64, 64)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backbone_out = self.model.forward_image(image)
        _, feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *size) for f, size in zip(feats, self.sizes)]
        return maps[2], maps[0], maps[1]


def channels_last_features(
    high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two high-resolution maps in the row order of :meth:`Sam2Decoder.masks_channels_last`.

    ``high_res_feats_1`` ``(1, C1, 128, 128)`` -> ``(1, 64 * 64 * 4, C1)``, rows in ``(y, x, i, j)`` order
    for pixel ``(2y + i, 2x + j)``; ``high_res_feats_0`` ``(1, C0, 256, 256)`` -> ``(1, 64 * 64 * 16, C0)``,
    rows in ``(y, x, i, j, i2, j2)`` order for pixel ``(4y + 2i + i2, 4x + 2j + j2)``: the orders in which
    the two transposed convolutions, written as matrix products, emit their sub-pixels.
    """
    n = EMBED_SIZE
    c1, c0 = high_res_feats_1.shape[1], high_res_feats_0.shape[1]
    s1 = high_res_feats_1.reshape(1, c1, n, 2, n, 2).permute(0, 2, 4, 3, 5, 1).reshape(1, -1, c1)
    s0 = high_res_feats_0.reshape(1, c0, n, 2, 2, n, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(1, -1, c0)
    return s0, s1


class Sam2Decoder(SamDecoder):
    """Prompt encoder + mask decoder for B prompt sets, all four masks (``MaskDecoder.predict_masks`` with
    ``repeat_image=True``, as ``SAM2ImagePredictor._predict`` calls it).

    SAM 2's decoder is SAM's with an object-score token before the IoU token and the two
    high-resolution feature maps added inside the mask upscaling, so SAM's rewrites apply as they
    are (:class:`fastseg_export.sam.SamDecoder`: the points embedded with ``torch.where`` selections,
    the image side with batch 1 instead of B copies, both cross-attentions with the image-side
    projections folded into the token side, the upscaling channels-last as matrix products); here
    the feature maps are added channels-last, in the sub-pixel order of those products.
    """

    def __init__(self, model: nn.Module) -> None:
        nn.Module.__init__(self)
        self._take(model.sam_prompt_encoder, model.sam_mask_decoder)

    def output_tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """The object-score token (SAM 2.1's decoders have one), IoU and mask tokens, then the prompt tokens."""
        dec = self.mask_decoder
        first = [dec.obj_score_token.weight] if dec.pred_obj_scores else []
        output_tokens = torch.cat([*first, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse), dim=1)

    def heads_with_features(
        self, hs: torch.Tensor, keys: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks`` after the transformer, with the feature maps of :func:`channels_last_features`."""
        dec = self.mask_decoder
        s = 1 if dec.pred_obj_scores else 0
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : (s + 1 + dec.num_mask_tokens), :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        return self.masks_channels_last_with(keys, hyper_in, s0, s1), dec.iou_prediction_head(iou_token_out)

    def masks_channels_last_with(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor
    ) -> torch.Tensor:
        """``act2(dc2(act1(ln1(dc1(src) + feat_s1))) + feat_s0)``, then ``hyper_in @``, channels-last
        (see :meth:`fastseg_export.sam.SamDecoder.masks_channels_last` for the products)."""
        conv1, norm, act1, conv2, act2 = self.mask_decoder.output_upscaling
        batch = keys.shape[0]
        c0, c1 = conv1.weight.shape[:2]
        c2 = conv2.weight.shape[1]
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c0, 4 * c1)
        x = (keys @ w1 + conv1.bias.repeat(4)).reshape(batch, -1, c1) + s1  # (B, 4096 * 4, c1)
        # LayerNorm2d normalises over the channels of each pixel: the last axis here
        u = x.mean(-1, keepdim=True)
        v = (x - u).pow(2).mean(-1, keepdim=True)
        x = act1(norm.weight * ((x - u) / torch.sqrt(v + norm.eps)) + norm.bias)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = act2((x @ w2 + conv2.bias.repeat(4)).reshape(batch, -1, c2) + s0)  # (B, 4096 * 16, c2)
        masks = x @ hyper_in.transpose(1, 2)
        m, n = masks.shape[2], EMBED_SIZE
        masks = masks.reshape(batch, n, n, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, m, 4 * n, 4 * n)

    def forward(  # type: ignore[override]
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        hs, keys = self.transformer(image_embed + dense, self.output_tokens(sparse))
        return self.heads_with_features(hs, keys, *channels_last_features(high_res_feats_0, high_res_feats_1))


class Sam2DecoderImage(Sam2Decoder):
    """The image-only start of the decoder, once per image (:class:`fastseg_export.sam.SamDecoderImage`'s
    four outputs, plus the two feature maps in the upscaling's channels-last order)."""

    def forward(  # type: ignore[override]
        self, image_embed: torch.Tensor, high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return (*self.first_image_side(image_embed), *channels_last_features(high_res_feats_0, high_res_feats_1))


class Sam2PointDecoder(Sam2Decoder):
    """The decoder after :class:`Sam2DecoderImage`, for B prompt sets without a mask input."""

    def forward(  # type: ignore[override]
        self,
        image_keys: torch.Tensor,
        token_keys: torch.Tensor,
        token_values: torch.Tensor,
        image_queries: torch.Tensor,
        high_res_s0: torch.Tensor,
        high_res_s1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.output_tokens(self.embed_points(point_coords, point_labels))
        hs, keys = self.transformer_from_image_side(image_keys, token_keys, token_values, image_queries, tokens)
        return self.heads_with_features(hs, keys, high_res_s0, high_res_s1)


#: Outputs of ``decoder_image``, inputs (with the prompt) of ``decoder_points``.
DECODER_IMAGE_OUTPUTS = [*SAM_DECODER_IMAGE_OUTPUTS, "high_res_s0", "high_res_s1"]


def graphs(model: nn.Module, spec: ModelSpec) -> list[Graph]:
    size = spec.input_size
    gen = torch.Generator().manual_seed(0)
    encoder = Graph(
        name="encoder",
        module=Sam2Encoder(model).eval(),
        example_inputs=(torch.zeros(1, 3, size, size),),
        input_names=["image"],
        output_names=["image_embed", "high_res_feats_0", "high_res_feats_1"],
    )
    features = (
        torch.randn(1, 256, 64, 64, generator=gen),
        torch.randn(1, 32, 256, 256, generator=gen),
        torch.randn(1, 64, 128, 128, generator=gen),
    )
    prompts = (torch.rand(2, 3, 2, generator=gen) * size, torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]))
    decoder = Graph(
        name="decoder",
        module=Sam2Decoder(model).eval(),
        example_inputs=(*features, *prompts, torch.randn(2, 1, LOW_RES_SIZE, LOW_RES_SIZE, generator=gen),
                        torch.ones(1)),
        input_names=[
            "image_embed", "high_res_feats_0", "high_res_feats_1",
            "point_coords", "point_labels", "mask_input", "has_mask_input",
        ],
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={**_PROMPT_AXES, "mask_input": {0: "mask_batch"}},
    )
    decoder_image = Graph(
        name="decoder_image",
        module=Sam2DecoderImage(model).eval(),
        example_inputs=features,
        input_names=["image_embed", "high_res_feats_0", "high_res_feats_1"],
        output_names=DECODER_IMAGE_OUTPUTS,
    )
    with torch.no_grad():
        image_side = decoder_image.module(*features)
    decoder_points = Graph(
        name="decoder_points",
        module=Sam2PointDecoder(model).eval(),
        example_inputs=(*image_side, *prompts),
        input_names=[*DECODER_IMAGE_OUTPUTS, "point_coords", "point_labels"],
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes=_PROMPT_AXES,
    )
    return [encoder, decoder, decoder_image, decoder_points]


def manifest_extra(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    dec = model.sam_mask_decoder
    return {
        "feature_shapes": {"image_embed": [256, 64, 64], "high_res_feats_0": [32, 256, 256],
                           "high_res_feats_1": [64, 128, 128]},
        "low_res_size": LOW_RES_SIZE,
        "num_mask_outputs": int(dec.num_mask_tokens),
        "dynamic_multimask": {
            "enabled": bool(dec.dynamic_multimask_via_stability),
            "stability_delta": float(dec.dynamic_multimask_stability_delta),
            "stability_thresh": float(dec.dynamic_multimask_stability_thresh),
        },
    }


def check_inputs(
    model: nn.Module,
    spec: ModelSpec,
    image: np.ndarray,
    known_outputs: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of both graphs from a real photo, with the runtime's preprocessing and prompt layout:
    one point (padded to the other set's length) and two points plus a box; the mask input is
    PyTorch's own answer to the first set."""
    from fastseg import sam2 as rt

    tensor = rt.preprocess(image, spec)
    with torch.no_grad():
        feats = Sam2Encoder(model).eval()(torch.from_numpy(tensor))
    arrays = {name: t.numpy().copy() for name, t in zip(rt.ENCODER_OUTPUTS, feats)}
    if known_outputs is not None:
        known_outputs["encoder"] = {name: a.copy() for name, a in arrays.items()}
    one_xy, one_labels, set_xy, set_labels = check_prompt_sets(
        rt.build_prompt_arrays, image.shape[:2], spec.input_size
    )
    decoder = Sam2Decoder(model).eval()
    size = LOW_RES_SIZE
    with torch.no_grad():
        prompt = (torch.from_numpy(one_xy), torch.from_numpy(one_labels))
        low_res, _ = decoder(*feats, *prompt, torch.zeros(1, 1, size, size), torch.zeros(1))
        image_side = Sam2DecoderImage(model).eval()(*feats)
    prompt_sets = {
        "point_coords": np.concatenate([one_xy, set_xy]),
        "point_labels": np.concatenate([one_labels, set_labels]),
    }
    return {
        "encoder": {"image": tensor},
        "decoder": {
            **arrays,
            **prompt_sets,
            "mask_input": low_res[:, :1].numpy().copy(),
            "has_mask_input": np.ones(1, np.float32),
        },
        "decoder_image": {name: a.copy() for name, a in arrays.items()},
        "decoder_points": {
            **{name: t.numpy().copy() for name, t in zip(DECODER_IMAGE_OUTPUTS, image_side)},
            **prompt_sets,
        },
    }


__all__ = [
    "DECODER_IMAGE_OUTPUTS",
    "HYPERNETWORK_SCALE",
    "Sam2Decoder",
    "Sam2DecoderImage",
    "Sam2Encoder",
    "Sam2PointDecoder",
    "channels_last_features",
    "build_model",
    "check_inputs",
    "graphs",
    "load_model",
    "manifest_extra",
    "write_random_checkpoint",
]
