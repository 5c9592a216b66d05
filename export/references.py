"""Names the reference implementations give fastseg's models (no torch needed to read them)."""

from __future__ import annotations

#: ``segment_anything`` / ``mobile_sam`` ``sam_model_registry`` key of each SAM-family model.
SAM_ARCH = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h", "mobile_sam": "vit_t"}
