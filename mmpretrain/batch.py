"""The batch contract between data and model (docs/architecture.md has the field table).

Defined here once so that `data/` and `model/` agree without importing each other.
"""
import dataclasses

MODALITY_PAD, MODALITY_TEXT, MODALITY_VISUAL = 0, 1, 2

# Fields the device step reads; the host also carries `skipped_<reason>` counts and the
# tokens each stream packed into the row (`stream_tokens_<stream>`).
DEVICE_FIELDS = ("tokens", "modality", "segment_ids", "block_ids", "positions",
                 "text_loss_mask", "visual_loss_mask", "frames", "frame_slot")


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """Shape of one packed row."""
  seq_len: int
  max_frames: int
  tokens_per_frame: int
  frame_shape: tuple[int, int, int]   # (H, W, C): pixels, or a cached latent grid (h, w, c)
  frame_dtype: str = "uint8"          # pixels; a cached latent's dtype (float32, bfloat16)

# Why a document was dropped: undecodable media, nothing to train on, longer than a row
# (or more frames than a row holds), a frame or action list of the wrong shape, a record
# the dataset's files could not give back (data.on_unreadable='skip').
SKIP_REASONS = ("corrupt", "empty", "too_long", "bad_shape", "unreadable")
SKIP_FIELDS = tuple(f"skipped_{reason}" for reason in SKIP_REASONS)

# The streams documents come from (data/streams.py makes each); a row counts the tokens it
# holds of each, so a run can log the token share each stream realises.
STREAMS = ("text", "image_text", "video", "action_video", "vqa")
STREAM_TOKEN_FIELDS = tuple(f"stream_tokens_{stream}" for stream in STREAMS)

# What a position is to the FFNs and the routing statistics (model/transformer.py
# `token_kinds` derives it from `modality`; -1 = padding): text, a clean image or frame
# (read, "understanding"), a noisy one (being generated). Visual kinds follow text, so
# `is_visual` is one comparison.
TOKEN_KINDS = ("text", "visual_understanding", "visual_generation")


def is_visual(token_kind):
  """token_kind: TOKEN_KINDS indices (-1 = padding), any array -> whether each is visual."""
  return token_kind >= TOKEN_KINDS.index("visual_understanding")
