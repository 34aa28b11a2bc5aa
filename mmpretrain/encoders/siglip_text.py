"""SigLIP's text tower, read from a Hugging Face checkpoint directory: what a caption is
scored against in a CLIP score (encoders/clip_score.py).

Token and learned position embeddings, pre-LayerNorm blocks that attend both ways with no
padding mask (SigLIP pads every caption to max_position_embeddings and was trained so), a
final norm, and a linear head on the last position's state. The blocks are the vision
tower's (`vit.Block`).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from mmpretrain import storage
from mmpretrain.encoders import hf_import
from mmpretrain.encoders.vit import Block, ViTConfig

# transformers' SiglipTextConfig defaults: a hub config.json lists only what differs (an
# absent projection_size is hidden_size).
TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64,
                     hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=1)


@dataclasses.dataclass(frozen=True)
class TextConfig:
  blocks: ViTConfig         # width, depth, heads, MLP and activation of the blocks
  vocab_size: int
  max_length: int           # captions are padded (and cut) to this many tokens
  projection: int
  pad_id: int


def text_config_from_hf(hf: dict) -> TextConfig:
  if hf.get("model_type") != "siglip":
    raise ValueError(f"model_type {hf.get('model_type')!r} has no SigLIP text tower: use a "
                     "full SigLIP or SigLIP 2 checkpoint (text and vision)")
  text = {**TEXT_DEFAULTS, **hf.get("text_config", {})}
  blocks = ViTConfig(image_size=1, patch_size=1, width=text["hidden_size"],
                     depth=text["num_hidden_layers"], num_heads=text["num_attention_heads"],
                     mlp_dim=text["intermediate_size"], layer_norm_eps=text["layer_norm_eps"],
                     activation={"gelu_pytorch_tanh": "gelu_tanh"}.get(text["hidden_act"],
                                                                        text["hidden_act"]))
  return TextConfig(blocks, text["vocab_size"], text["max_position_embeddings"],
                    text.get("projection_size") or text["hidden_size"], text["pad_token_id"])


class SiglipTextTower(nnx.Module):
  """Token ids [B, max_length] -> caption embeddings [B, projection] (not normalized)."""

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
    width = cfg.blocks.width
    self.token_embed = nnx.Embed(cfg.vocab_size, width, rngs=rngs)
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.max_length, width)) * 0.02)
    self.blocks = nnx.List([Block(cfg.blocks, dtype=jnp.float32, rngs=rngs)
                            for _ in range(cfg.blocks.depth)])
    self.norm = nnx.LayerNorm(width, epsilon=cfg.blocks.layer_norm_eps, rngs=rngs)
    self.head = nnx.Linear(width, cfg.projection, rngs=rngs)

  def __call__(self, ids):
    x = self.token_embed(ids) + self.pos_embed[...][:ids.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, -1])


def _text_tree(w: dict, depth: int) -> dict:
  return {"token_embed": {"embedding": w["embeddings.token_embedding.weight"]},
          "pos_embed": w["embeddings.position_embedding.weight"],
          "blocks": hf_import.siglip_blocks(w, depth),
          "norm": hf_import.norm_tensors(w, "final_layer_norm"),
          "head": hf_import.linear_tensors(w, "head")}


def load_siglip_text_tower(directory: str) -> tuple[TextConfig, SiglipTextTower]:
  hf = storage.read_json(storage.join(directory, "config.json"))
  cfg = text_config_from_hf(hf)
  prefix = "text_model."
  weights = {k[len(prefix):]: v for k, v in hf_import.read_safetensors(directory).items()
             if k.startswith(prefix)}
  try:
    tree = _text_tree(weights, cfg.blocks.depth)
  except KeyError as e:
    raise ValueError(f"{directory}: tensor text_model.{e.args[0]} is missing for a SigLIP text "
                     f"tower of depth {cfg.blocks.depth}; is config.json from the same "
                     "checkpoint?") from e
  model = nnx.eval_shape(lambda: SiglipTextTower(cfg, rngs=nnx.Rngs(0)))
  return cfg, hf_import.fill_params(model, tree, directory)


class CaptionTokenizer:
  """The checkpoint's tokenizer.json, as its processor calls it for SigLIP: special tokens
  added, cut and padded to `max_length` with the pad token."""

  def __init__(self, directory: str, cfg: TextConfig):
    path = storage.join(directory, "tokenizer.json")
    if not storage.exists(path):
      raise FileNotFoundError(f"{path} is missing: copy the checkpoint's tokenizer.json (a "
                              "hub download or save_pretrained of its processor has it)")
    with storage.local_file(path) as local:
      self.tokenizer = Tokenizer.from_file(local)
    settings = storage.join(directory, "tokenizer_config.json")
    pad = storage.read_json(settings).get("pad_token") if storage.exists(settings) else None
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = self.tokenizer.token_to_id(pad) if pad else None
    self.pad_id = cfg.pad_id if pad_id is None else pad_id
    self.max_length = cfg.max_length

  def __call__(self, captions: list[str]) -> np.ndarray:
    ids = np.full((len(captions), self.max_length), self.pad_id, np.int32)
    for row, encoding in enumerate(self.tokenizer.encode_batch(list(captions))):
      kept = encoding.ids[:self.max_length]
      ids[row, :len(kept)] = kept
    return ids
