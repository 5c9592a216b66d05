"""Names the reference implementations give fastseg's models (no torch needed to read them)."""

from __future__ import annotations

#: ``segment_anything`` / ``mobile_sam`` ``sam_model_registry`` key of each SAM-family model.
SAM_ARCH = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h", "mobile_sam": "vit_t"}

#: ``sam2`` config (inside the installed package) of each SAM 2.1 model.
SAM2_CONFIG = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
