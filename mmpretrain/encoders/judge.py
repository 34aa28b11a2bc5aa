"""The judge of generation: a small CNN trained on a labelled dataset's real images
(`mmpretrain train-classifier`), which evaluations load to ask whether a generated image
shows the class its caption asked for, and whose features give the Fréchet distance.

Saved as a directory: Orbax params and classifier.json (architecture, dataset, held-out
accuracy on real images — the ceiling a generator can be scored against), written last.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain import storage
from mmpretrain.pixels import to_signed
from mmpretrain.encoders.store import restore_module, save_with_config

CLASSIFIER_JSON = "classifier.json"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  image_size: int
  channels: int
  num_classes: int
  widths: tuple[int, ...]      # conv widths; every one after the first halves the resolution


class ImageClassifier(nnx.Module):
  """3×3 convolutions with GELU (stride 2 after the first) and a linear head on the
  flattened last map (where strokes are matters for digits): uint8 images [B, H, W, C] ->
  logits [B, classes]."""

  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    widths = (cfg.channels, *cfg.widths)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=1 if i == 0 else 2, rngs=rngs)
                           for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
    side = cfg.image_size
    for _ in cfg.widths[1:]:
      side = -(-side // 2)                 # 'SAME' padding, stride 2
    self.head = nnx.Linear(widths[-1] * side * side, cfg.num_classes, rngs=rngs)

  def __call__(self, images):
    x = self.feature_maps(images)
    return self.head(x.reshape(x.shape[0], -1))

  def feature_maps(self, images):
    """The last convolution's activations [B, h, w, C]."""
    x = to_signed(images)
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    return x

  def features(self, images):
    """[B, C]: the last map averaged over space — the feature space of the Fréchet distance
    between generated and real images (FID's recipe with this judge in Inception's place)."""
    return jnp.mean(self.feature_maps(images), axis=(1, 2))


def save_classifier(directory: str, model: ImageClassifier, meta: dict) -> None:
  """Params, then classifier.json (architecture and `meta`): the JSON marks it complete."""
  save_with_config(directory, model, CLASSIFIER_JSON, {**dataclasses.asdict(model.cfg), **meta})


def load_classifier(directory: str) -> tuple[ImageClassifier, dict]:
  """The saved classifier and its classifier.json."""
  path = storage.join(directory, CLASSIFIER_JSON)
  if not storage.exists(path):
    raise FileNotFoundError(f"no classifier in {directory}: run `mmpretrain train-classifier` "
                            "(make demo does) or set config.eval.classifier=''")
  meta = storage.read_json(path)
  fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
  cfg = ClassifierConfig(**{k: tuple(v) if k == "widths" else v for k, v in meta.items()
                            if k in fields})
  abstract = nnx.eval_shape(lambda: ImageClassifier(cfg, rngs=nnx.Rngs(0)))
  return restore_module(directory, abstract), meta
