"""The paper's RAE decoder, trained by `mmpretrain train-rae` before the runs that read it:
the ViT-XL decoder of configs/paper/rae_so400m_224/rae.json (width 1152, 28 layers, 16
heads, MLP 4096; shapes read from there, so the stage trains the RAE those runs are
compiled for) on the frozen SigLIP 2 So400m/14 encoder at 224 px (16×16 tokens, all 1152
channels), 512 images a step on a v5p-64's 32 chips, the decoder and its AdamW state split
over them (FSDP: on the cost model a step takes less than with every chip holding all of
them, docs/tpu.md).

  mmpretrain compile --config=configs/paper/rae_so400m_224.py --topology=v5p-64 \
      --program=train_rae
  mmpretrain train-rae --config=configs/paper/rae_so400m_224.py --workdir=gs://B/runs/rae \
      --config.rae.encoder=gs://B/siglip2-so400m-patch14-224

Compiling needs only shapes, which the default `rae.encoder` (that RAE directory) gives; to
train, point it at the Hugging Face checkpoint's directory (config.json, safetensors), and
`rae.datasets` (by default the image–text datasets the paper runs read) at your images.
The decoder then serves the runs as `--config.visual.checkpoint=gs://B/runs/rae/representation`
(docs/tpu.md has the pod's sequence).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import RAE_SO400M, paper_data  # pylint: disable=wrong-import-position

TOPOLOGY = "v5p-64"
PROGRAM = "train_rae"          # what `mmpretrain compile` (scripts/compile_paper.py) compiles


def get_config(arg=None):
  c = paper_data(arg)
  with open(os.path.join(RAE_SO400M, "rae.json"), encoding="utf-8") as f:
    decoder = json.load(f)["decoder"]
  c.rae.encoder = RAE_SO400M
  c.rae.datasets = c.data.streams.image_text.datasets.to_dict()
  c.rae.decoder = {key: decoder[key] for key in ("width", "depth", "num_heads", "mlp_dim")}
  c.rae.latent_channels = 0
  # It reads pixels: the paper runs' latent cache is made with the RAE this trains.
  c.visual.cached_latents = False
  c.data.batch_size = 512
  c.mesh.data, c.mesh.fsdp = 1, 32
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 2e-4, 2000
  c.optimizer.weight_decay = 0.0
  c.train.num_steps, c.train.log_every = 100_000, 100
  return c
