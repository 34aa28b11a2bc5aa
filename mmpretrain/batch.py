"""The batch contract between data and model (docs/architecture.md has the field table).

Defined here once so that `data/` and `model/` agree without importing each other.
"""
MODALITY_PAD, MODALITY_TEXT, MODALITY_VISUAL = 0, 1, 2

# Fields the device step reads; the host may carry more (e.g. `skipped_documents`).
DEVICE_FIELDS = ("tokens", "modality", "segment_ids", "block_ids", "positions",
                 "text_loss_mask", "visual_loss_mask", "frames", "frame_slot")
