"""Export recipe for SAM 2.1 on images: ``sam2.1_hiera_{tiny,small,base_plus,large}`` (Meta's ``sam2``).

Two graphs:

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
    (B, 4, 256, 256) and ``iou_predictions`` (B, 4).

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
from fastseg_export.common import Graph, atomic_torch_save, check_state_dict_matches, load_state_dict
from fastseg_export.references import SAM2_CONFIG
from fastseg_export.sam import check_prompt_sets

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
    model = build_model(spec)
    check_state_dict_matches(model, state, f"{spec.name} ({spec.checkpoint_format})", checkpoint)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


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


class Sam2Decoder(nn.Module):
    """Prompt encoder + mask decoder for B prompt sets, all four masks.

    The points are embedded as ``PromptEncoder._embed_points`` does after its padding (the runtime
    adds the padding point): shift to the pixel centre, random-Fourier encoding, ``not_a_point_embed``
    for label -1 and ``point_embeddings[i]`` added for label i, each selection a ``torch.where`` as in
    the original. ``mask_input`` enters through ``mask_downscaling`` when ``has_mask_input`` is 1,
    else ``no_mask_embed``. The image side has batch 1 and is repeated to the prompt sets as
    ``predict_masks(repeat_image=True)`` does.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        embedding = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == -1, torch.zeros_like(embedding) + pe.not_a_point_embed.weight, embedding)
        for i, point_embedding in enumerate(pe.point_embeddings):
            embedding = torch.where(labels == i, embedding + point_embedding.weight, embedding)
        return embedding

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = self.embed_points(point_coords, point_labels)
        size = pe.image_embedding_size
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, size[0], size[1])
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        masks, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return masks, iou


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
    decoder = Graph(
        name="decoder",
        module=Sam2Decoder(model).eval(),
        example_inputs=(
            torch.randn(1, 256, 64, 64, generator=gen),
            torch.randn(1, 32, 256, 256, generator=gen),
            torch.randn(1, 64, 128, 128, generator=gen),
            torch.rand(2, 3, 2, generator=gen) * size,
            torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
            torch.randn(2, 1, LOW_RES_SIZE, LOW_RES_SIZE, generator=gen),
            torch.ones(1),
        ),
        input_names=[
            "image_embed", "high_res_feats_0", "high_res_feats_1",
            "point_coords", "point_labels", "mask_input", "has_mask_input",
        ],
        output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={
            "point_coords": {0: "batch", 1: "num_points"},
            "point_labels": {0: "batch", 1: "num_points"},
            "mask_input": {0: "mask_batch"},
            "low_res_masks": {0: "batch"},
            "iou_predictions": {0: "batch"},
        },
    )
    return [encoder, decoder]


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
    return {
        "encoder": {"image": tensor},
        "decoder": {
            **arrays,
            "point_coords": np.concatenate([one_xy, set_xy]),
            "point_labels": np.concatenate([one_labels, set_labels]),
            "mask_input": low_res[:, :1].numpy().copy(),
            "has_mask_input": np.ones(1, np.float32),
        },
    }


__all__ = [
    "HYPERNETWORK_SCALE",
    "Sam2Decoder",
    "Sam2Encoder",
    "build_model",
    "check_inputs",
    "graphs",
    "load_model",
    "manifest_extra",
    "write_random_checkpoint",
]
