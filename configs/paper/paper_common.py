"""What every paper-scale config shares: 4,096-token rows of text and image–text documents,
the RAE arm on SigLIP 2 So400m/14 at 224 px (16×16 tokens × 1152 channels per image) with
its latents precomputed by `mmpretrain prepare` (`visual.cached_latents`: the frozen
encoder would otherwise run on every image of every step), bf16 compute, scanned layers
that keep their matmul outputs for the backward pass (`model.remat=dots_no_batch`: full
remat would recompute them, and the memory is there), and fully sharded data parallelism
over the slice's chips (docs/paper_compile.md, "Why each run is laid out as it is").

`configs/paper/rae_so400m_224/rae.json` describes that RAE's shapes (the encoder and a
ViT-XL decoder), which is all `mmpretrain compile` needs; to train, point
`visual.checkpoint` at the directory `mmpretrain train-rae` writes for a Hub SigLIP 2
checkpoint (`--config.rae.encoder=DIR`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import base  # pylint: disable=wrong-import-position

RAE_SO400M = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rae_so400m_224")


def paper_data(arg=None):
  """The base config with the data every paper run reads (the RAE stage too, so both find
  the tokenizer `prepare` trained): 224 px RGB images, 65,536 tokens, text and image–text
  documents, the So400m RAE's cached latents."""
  c = base.get_config(arg)
  c.data.tokenizer.vocab_size = 65536
  c.data.image_size, c.data.image_channels = 224, 3
  c.data.max_frames = 8
  c.data.mixture = {"text": 0.5, "image_text": 0.5}
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "rae", RAE_SO400M, 1
  c.visual.cached_latents = True
  return c


def paper_config(arg=None, *, chips: int, batch: int, d_model: int, layers: int, heads: int,
                 mlp: int, seq_len: int = 4096):
  c = paper_data(arg)
  c.data.seq_len, c.data.batch_size = seq_len, batch
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = d_model, layers, mlp
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = heads, heads, 128
  c.model.dtype, c.model.remat, c.model.scan_layers = "bfloat16", "dots_no_batch", True
  c.mesh.data, c.mesh.fsdp = 1, chips
  return c
