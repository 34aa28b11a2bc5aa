"""`mmpretrain train-classifier`: the frozen judge of the generation-alignment eval (a
GenEval-like check that runs here). A small CNN learns the classes of a labelled dataset's
real training images at the unified model's frame size; evaluation then asks whether
images generated from class captions show the requested class.

Saved as <workdir>/classifier (encoders/judge.py: the model, saving and loading).
"""
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmpretrain import storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import image_batches, stage_batches
from mmpretrain.encoders.judge import ClassifierConfig, ImageClassifier, save_classifier
from mmpretrain.stages.loop import data_rows, train_model, write_summary

CLASSIFIER_DIR = "classifier"


def classifier_config(config) -> ClassifierConfig:
  data, k = config.data, config.classifier
  return ClassifierConfig(image_size=data.image_size, channels=data.image_channels,
                          num_classes=k.num_classes, widths=tuple(k.widths))


def classifier_loss(model: ImageClassifier, batch, rng):
  del rng
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
  classes = {config.classifier.dataset: 1.0}
  trained = train_model(config, workdir, model, classifier_loss,
                        stage_batches(config, tok, classes, caption_len=1, rows=data_rows(config),
                                      labelled=True), name="classifier")
  if trained.preempted:
    return trained.summary()
  held_out = accuracy(model, image_batches(config, tok, classes, split=config.eval.split,
                                           batch_size=config.data.batch_size, caption_len=1,
                                           seed=config.seed, repeat=False, labelled=True))
  directory = storage.join(workdir, CLASSIFIER_DIR)
  save_classifier(directory, model, {"dataset": config.classifier.dataset,
                                     "held_out_accuracy": held_out})
  return write_summary(workdir, {**trained.summary(), "held_out_accuracy": held_out,
                                 "classifier": directory})
