"""CLIP score of images against the captions they were drawn for, with a SigLIP or SigLIP 2
checkpoint (a Hugging Face directory holding both towers and tokenizer.json).

The score is 100 × the mean over images of max(cos(image, caption), 0), as torchmetrics
computes it for CLIP, with SigLIP's pooled image and caption embeddings. Images are
prepared as SigLIP's processor prepares them: RGB, resized to the checkpoint's image size
with Pillow's bicubic filter, scaled to [0, 1], normalized by its mean and std.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from mmpretrain.encoders import hf_import, siglip_text


def _jitted(module):
  graphdef, state = nnx.split(module)
  call = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return lambda x: call(state, x)


class ClipScorer:
  """cosines(images uint8 [N, H, W, C], captions) -> [N] cosine similarities."""

  def __init__(self, directory: str, batch_size: int = 32):
    vision = hf_import.load_hf_vision_encoder(directory)
    self.vision_cfg = vision.cfg
    if not self.vision_cfg.pool_head:
      raise ValueError(f"{directory}: the vision tower has no pooling head (vision_use_head"
                       "=false), so it gives no image embedding to score")
    text_cfg, text = siglip_text.load_siglip_text_tower(directory)
    self.tokenize = siglip_text.CaptionTokenizer(directory, text_cfg)
    self._image = _jitted(vision)
    self._caption = _jitted(text)
    self.batch_size = batch_size

  def prepare(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] (C = 1 or 3) -> the vision tower's input [N, S, S, 3]."""
    cfg, size = self.vision_cfg, self.vision_cfg.image_size
    resized = [np.asarray(Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1
                                          else image).convert("RGB")
                          .resize((size, size), Image.BICUBIC), np.float32)
               for image in images]
    return ((np.stack(resized) / 255.0 - np.asarray(cfg.image_mean, np.float32))
            / np.asarray(cfg.image_std, np.float32)).astype(np.float32)

  def embeddings(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit image and caption embeddings [N, projection] of each image and its caption."""
    image_parts, caption_parts = [], []
    for start in range(0, len(images), self.batch_size):
      stop = start + self.batch_size
      image_parts.append(self._image(self.prepare(images[start:stop]))["pooled"])
      caption_parts.append(self._caption(jnp.asarray(self.tokenize(captions[start:stop]))))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return (np.asarray(unit(jnp.concatenate(image_parts))),
            np.asarray(unit(jnp.concatenate(caption_parts))))

  def cosines(self, images: np.ndarray, captions: list[str]) -> np.ndarray:
    if len(images) != len(captions):
      raise ValueError(f"{len(images)} images but {len(captions)} captions: give one caption "
                       "per image")
    image_embeds, caption_embeds = self.embeddings(images, captions)
    return np.sum(image_embeds * caption_embeds, axis=-1)


def clip_score(cosines: np.ndarray) -> float:
  """100 × the mean of max(cosine, 0)."""
  return float(100.0 * np.mean(np.maximum(cosines, 0.0)))
