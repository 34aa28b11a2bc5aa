"""`mmpretrain train-encoder`: the in-project semantic encoder (SigLIP-style, sigmoid loss on
image–caption pairs), saved as <workdir>/encoder for the RAE to freeze."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmpretrain import storage
from mmpretrain.data import pipeline
from mmpretrain.data.images import NO_LABEL, image_batches, skipped_records, stage_batches
from mmpretrain.data.sources import digit_caption
from mmpretrain.encoders import contrastive, store
from mmpretrain.encoders.vit import ViTConfig, normalize
from mmpretrain.stages.loop import data_rows, train_model, write_summary

ENCODER_DIR = "encoder"


def image_tower_config(config) -> ViTConfig:
  e, data = config.encoder.image, config.data
  return ViTConfig(image_size=data.image_size, patch_size=e.patch_size, width=e.width,
                   depth=e.depth, num_heads=e.num_heads, mlp_dim=e.mlp_dim,
                   channels=data.image_channels, pool_head=True,
                   image_mean=(0.5,) * data.image_channels, image_std=(0.5,) * data.image_channels)


def text_tower_config(config, vocab_size: int) -> contrastive.TextConfig:
  t = config.encoder.text
  return contrastive.TextConfig(vocab_size=vocab_size, max_len=config.encoder.caption_len,
                                width=t.width, depth=t.depth, num_heads=t.num_heads,
                                mlp_dim=t.mlp_dim)


def encoder_loss(model: contrastive.DualEncoder, batch, rng):
  del rng
  captions = batch["captions"]
  logits = model.logits(normalize(batch["images"], model.image.cfg), captions)
  best = jnp.argmax(logits, axis=1)     # each image's best caption in the batch: a match?
  retrieval = jnp.mean(jnp.all(captions[best] == captions, axis=-1))
  return contrastive.sigmoid_loss(logits, captions), {"retrieval_accuracy": retrieval}


def digit_zero_shot(config, model: contrastive.DualEncoder, tok, num_images: int = 500) -> float:
  """Zero-shot digit classification on held-out MNIST with the ten class captions."""
  batches = image_batches(config, tok, {"mnist_captions": 1.0}, split="validation",
                          batch_size=num_images, caption_len=config.encoder.caption_len,
                          seed=0, repeat=False)
  batch = next(batches)
  assert (batch["label"] != NO_LABEL).all()
  classes = np.zeros((10, config.encoder.caption_len), np.int32)
  for k in range(10):
    ids = tok.encode(digit_caption(k))[:config.encoder.caption_len]
    classes[k, :len(ids)] = ids
  images = normalize(batch["images"], model.image.cfg)
  return contrastive.zero_shot_accuracy(model, images, batch["label"], jnp.asarray(classes))


def train_encoder(config, workdir: str) -> dict:
  tok = pipeline.load_tokenizer(config)
  model = contrastive.DualEncoder(image_tower_config(config),
                                  text_tower_config(config, tok.vocab_size),
                                  temperature_init=config.encoder.temperature_init,
                                  bias_init=config.encoder.bias_init, rngs=nnx.Rngs(config.seed))
  batches = stage_batches(config, tok, config.encoder.datasets,
                          caption_len=config.encoder.caption_len, rows=data_rows(config))
  trained = train_model(config, workdir, model, encoder_loss, batches, name="encoder")
  if trained.preempted:
    return trained.summary()
  summary = {**trained.summary(), "skipped_records": skipped_records(batches)}
  if config.encoder.datasets.get("mnist_captions", 0) > 0:
    summary["digit_zero_shot_accuracy"] = digit_zero_shot(config, model, tok)
  directory = storage.join(workdir, ENCODER_DIR)
  store.save_encoder(directory, model.image)
  summary["encoder"] = directory
  return write_summary(workdir, summary)
