"""`mmpretrain train-classifier`: the frozen judge of the generation-alignment eval (a
GenEval-like check that runs here). A small CNN learns the classes of a labelled dataset's
real training images at the unified model's frame size; evaluation then asks whether
images generated from class captions show the requested class.

Saved as <workdir>/classifier: Orbax params and classifier.json (architecture, dataset,
held-out accuracy on real images — the ceiling a generator can be scored against).
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmpretrain.data import pipeline
from mmpretrain.data.images import NO_LABEL, image_batches
from mmpretrain.encoders.store import restore_module, save_module
from mmpretrain.stages.loop import train_model, write_summary

CLASSIFIER_DIR = "classifier"
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
    x = images.astype(jnp.float32) / 127.5 - 1.0
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    return x

  def features(self, images):
    """[B, C]: the last map averaged over space — the feature space of the Fréchet distance
    between generated and real images (FID's recipe with this judge in Inception's place)."""
    return jnp.mean(self.feature_maps(images), axis=(1, 2))


def classifier_config(config) -> ClassifierConfig:
  d, k = config.data, config.classifier
  return ClassifierConfig(image_size=d.image_size, channels=d.image_channels,
                          num_classes=k.num_classes, widths=tuple(k.widths))


def labelled_batches(config, tok, split: str, batch_size: int, repeat: bool):
  dataset = config.classifier.dataset
  for batch in image_batches(config, tok, {dataset: 1.0}, split=split, batch_size=batch_size,
                             caption_len=1, seed=config.seed, repeat=repeat):
    if (batch["label"] == NO_LABEL).any():
      raise ValueError(f"classifier.dataset {dataset!r} has no class labels (map a `label` "
                       f"field in config.data.datasets.{dataset}.fields)")
    yield {"images": jnp.asarray(batch["images"]), "label": jnp.asarray(batch["label"])}


def classifier_loss(model: ImageClassifier, frozen, batch, rng):
  del frozen, rng
  logits = model(batch["images"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def accuracy(model: ImageClassifier, batches) -> float:
  predict = nnx.jit(lambda m, images: jnp.argmax(m(images), -1))
  hits = [np.asarray(predict(model, b["images"]) == b["label"]) for b in batches]
  return float(np.concatenate(hits).mean())


def train_classifier(config, workdir: str) -> dict:
  tok = pipeline.load_tokenizer(config)
  model = ImageClassifier(classifier_config(config), rngs=nnx.Rngs(config.seed))
  history = train_model(config, workdir, model, classifier_loss,
                        labelled_batches(config, tok, "train", config.data.batch_size, True),
                        name="classifier")
  held_out = accuracy(model, labelled_batches(config, tok, config.eval.split,
                                              config.data.batch_size, repeat=False))
  directory = os.path.join(workdir, CLASSIFIER_DIR)
  save_module(directory, model)
  with open(os.path.join(directory, CLASSIFIER_JSON), "w", encoding="utf-8") as f:
    json.dump({**dataclasses.asdict(model.cfg), "dataset": config.classifier.dataset,
               "held_out_accuracy": held_out}, f, indent=2)    # last: marks it complete
  return write_summary(workdir, {"first": history[0], "last": history[-1],
                                 "held_out_accuracy": held_out, "classifier": directory})


def load_classifier(directory: str) -> tuple[ImageClassifier, dict]:
  """The saved classifier and its classifier.json."""
  path = os.path.join(directory, CLASSIFIER_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no classifier in {directory}: run `mmpretrain train-classifier` "
                            "(make demo does) or set config.eval.classifier=''")
  with open(path, encoding="utf-8") as f:
    meta = json.load(f)
  fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
  cfg = ClassifierConfig(**{k: tuple(v) if k == "widths" else v for k, v in meta.items()
                            if k in fields})
  abstract = nnx.eval_shape(lambda: ImageClassifier(cfg, rngs=nnx.Rngs(0)))
  return restore_module(directory, abstract), meta
