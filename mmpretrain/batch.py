"""The batch contract between data and model (docs/architecture.md has the field table).

Defined here once so that `data/` and `model/` agree without importing each other.
"""
MODALITY_PAD, MODALITY_TEXT, MODALITY_VISUAL = 0, 1, 2

# Fields the device step reads; the host also carries `skipped_<reason>` counts.
DEVICE_FIELDS = ("tokens", "modality", "segment_ids", "block_ids", "positions",
                 "text_loss_mask", "visual_loss_mask", "frames", "frame_slot")

# Why a document was dropped: undecodable media, nothing to train on, longer than a row
# (or more frames than a row holds), a frame or action list of the wrong shape, a record
# the dataset's files could not give back (data.on_unreadable='skip').
SKIP_REASONS = ("corrupt", "empty", "too_long", "bad_shape", "unreadable")
SKIP_FIELDS = tuple(f"skipped_{reason}" for reason in SKIP_REASONS)
