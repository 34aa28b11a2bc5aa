"""Demo: a small unified model learns Shakespeare (next token) and MNIST digits (flow
matching in the latent space of an RAE) in the same packed sequences, on 2 CPU cores.

`make demo` runs the chain (configs/stages/ hold the first two stages' configs):
  mmpretrain prepare --config=configs/demo.py
  mmpretrain train-encoder --config=configs/stages/encoder_demo.py --workdir=runs/demo_encoder
  mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir=runs/demo_rae \
      --config.rae.encoder=runs/demo_encoder/encoder
  mmpretrain train-classifier --config=configs/stages/classifier_demo.py \
      --workdir=runs/demo_classifier
  mmpretrain train --config=configs/demo.py --workdir=runs/demo
Pass `--config.visual.representation=pixels --config.visual.patch_size=4` for raw pixels.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = base.get_config(arg)
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.data.max_frames = 3
  c.data.mixture = {"text": 0.25, "image_text": 0.75}
  c.data.tokenizer.vocab_size = 4096
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = c.model.num_kv_heads = 4
  c.model.head_dim = 64
  c.model.mlp_dim = 768
  c.visual.representation = "rae"
  c.visual.checkpoint = "runs/demo_rae/representation"
  c.visual.patch_size = 1          # the RAE's 8×8 grid of 16-d latents: one token per latent
  # The numel rule gives 0.5 for 8×8×16 latents, but these semantic latents keep a digit's
  # class up to t ≈ 0.95: a shift of 4 trains there (docs/architecture.md, the objective).
  c.diffusion.time_shift = 4.0
  c.model.dtype = "bfloat16"      # bf16 compute, f32 params (faster on CPU too)
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.05
  c.train.num_steps = 800
  c.train.log_every = 25
  c.checkpoint.every_steps = 200
  c.eval.every_steps = 400             # at 400 and 800 (each evaluation draws and captions)
  c.eval.classifier = "runs/demo_classifier/classifier"    # train-classifier (make demo)
  c.sample.images_per_caption = 6
  return c
