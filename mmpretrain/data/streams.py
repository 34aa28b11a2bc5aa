"""Streams: records of TFDS datasets -> documents (text, image–text, video, action-video).

A stream reads the canonical fields it needs (`text`; `image` + `caption`; `frames`
[+ `fps`]; `frames` + `actions` [+ `mission`]) through the dataset's field mapping in
`config.data.datasets`, so any TFDS dataset with those contents plugs in. A record that
cannot become a document raises `BadRecord(reason)`; the pipeline counts and skips it.
"""
import io

import numpy as np
from PIL import Image

from mmpretrain.batch import SKIP_REASONS
from mmpretrain.data import documents
from mmpretrain.tokenizers.text import TextTokenizer, special_ids


class BadRecord(ValueError):
  """A record that cannot become a document; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    assert reason in SKIP_REASONS, reason
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


def as_text(value) -> str:
  text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
  return text.strip()


def decode_frame(value, size: int, channels: int) -> np.ndarray:
  """PNG/JPEG bytes or a uint8 array -> uint8 [size, size, channels]; a cached latent
  grid (a float array, data/latent_cache.py) passes as it is."""
  if isinstance(value, np.ndarray) and (value.dtype.kind == "f"
                                        or value.dtype.name == "bfloat16"):
    return value
  if isinstance(value, (bytes, np.bytes_)):
    try:
      with Image.open(io.BytesIO(value)) as image:
        image.load()
        value = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, SyntaxError) as e:      # PIL's errors for bad files
      raise BadRecord("corrupt", f"undecodable image ({e})") from e
  value = np.asarray(value)
  if value.ndim == 2:
    value = value[..., None]
  if value.ndim != 3 or value.dtype != np.uint8 or value.shape[-1] not in (1, 3, 4):
    raise BadRecord("bad_shape", f"frame of shape {value.shape} and dtype {value.dtype}")
  return documents.fit_frame(value[..., :3] if value.shape[-1] == 4 else value, size, channels)


class StreamContext:
  """What every stream needs: the tokenizer, the frame shape and the stream's settings."""

  def __init__(self, config, tok: TextTokenizer, stream: str):
    self.tok = tok
    self.settings = config.data.streams[stream]
    self.size, self.channels = config.data.image_size, config.data.image_channels
    self.specials = special_ids(tok)

  def frame(self, value) -> np.ndarray:
    return decode_frame(value, self.size, self.channels)

  def frames(self, values) -> np.ndarray:
    if len(values) == 0:
      raise BadRecord("empty", "no frames")
    return np.stack([self.frame(v) for v in values])

  def encode(self, value) -> list[int]:
    return self.tok.encode(as_text(value))


def text_document(ctx: StreamContext, record: dict, rng) -> documents.Document:
  del rng
  ids = ctx.encode(record["text"])
  if not ids:
    raise BadRecord("empty", "empty text")
  return documents.text_document(ids, ctx.tok.bos_id, ctx.tok.eos_id)


def image_text_document(ctx: StreamContext, record: dict, rng) -> documents.Document:
  """Caption→image (generation, with caption dropout) or image→caption (understanding)."""
  frame = ctx.frame(record["image"])
  caption = ctx.encode(record["caption"])
  if rng.random() < ctx.settings.generation_ratio:
    if rng.random() < ctx.settings.caption_dropout:
      caption = []              # unconditional example for classifier-free guidance
    return documents.generation_document(caption, frame, **ctx.specials)
  if not caption:
    raise BadRecord("empty", "empty caption")
  return documents.understanding_document(caption, frame, **ctx.specials)


def video_document(ctx: StreamContext, record: dict, rng) -> documents.Document:
  """`frames` consecutive frames at the configured fps from a random start, all generated."""
  clip = record["frames"]
  recorded_fps = float(record["fps"]) if "fps" in record else 0.0
  stride = max(1, round(recorded_fps / ctx.settings.fps)) if recorded_fps else 1
  span = (ctx.settings.frames - 1) * stride + 1
  if len(clip) < span:
    raise BadRecord("empty", f"{len(clip)} frames, need {span}")
  start = int(rng.integers(len(clip) - span + 1))
  return documents.video_document(ctx.frames(clip[start:start + span:stride]), **ctx.specials)


def action_video_document(ctx: StreamContext, record: dict, rng) -> documents.Document:
  """Context frames, the action taken next (as text), then the frame it leads to."""
  frames, actions = record["frames"], [as_text(a) for a in record["actions"]]
  context = ctx.settings.context_frames
  if len(actions) != len(frames) - 1:
    raise BadRecord("bad_shape", f"{len(frames)} frames but {len(actions)} actions")
  if len(frames) < context + 1:
    raise BadRecord("empty", f"{len(frames)} frames, need {context + 1}")
  t = int(rng.integers(context, len(frames)))        # predict frame t from t-context..t-1
  mission = ctx.encode(record["mission"]) if "mission" in record else []
  return documents.action_video_document(
      ctx.frames(frames[t - context:t]), ctx.encode(actions[t - 1]), ctx.frame(frames[t]),
      mission, **ctx.specials)


def training_answer(answers) -> str:
  """The answer a VQA document trains on: the one most annotators gave (the first of a
  tie), as VQA's `multiple_choice_answer` is chosen."""
  texts = [as_text(a) for a in answers]
  return max(texts, key=texts.count)


def vqa_document(ctx: StreamContext, record: dict, rng) -> documents.Document:
  """An image and a question about it, then the answer (the only trained text)."""
  del rng
  if len(record["answers"]) == 0:
    raise BadRecord("empty", "no answers")
  question, answer = ctx.encode(record["question"]), ctx.encode(training_answer(record["answers"]))
  if not question or not answer:
    raise BadRecord("empty", "empty question or answer")
  return documents.vqa_document(question, answer, ctx.frame(record["image"]), **ctx.specials)


# stream -> (canonical fields it reads, record -> document)
STREAMS = {
    "text": (("text",), text_document),
    "image_text": (("image", "caption"), image_text_document),
    "video": (("frames",), video_document),
    "action_video": (("frames", "actions"), action_video_document),
    "vqa": (("image", "question", "answers"), vqa_document),
}
