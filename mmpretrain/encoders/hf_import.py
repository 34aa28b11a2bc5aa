"""Pretrained vision encoders from Hugging Face checkpoint directories, local or on an
object store (gs://…; nothing is downloaded from a hub).

A checkpoint directory holds `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and optionally `preprocessor_config.json`, as written by
`save_pretrained` or fetched from the hub beforehand: SigLIP / SigLIP 2 fixed-resolution
models (e.g. google/siglip2-so400m-patch14-224; the vision tower of a full SigLIP model
is used) and DINOv2 with or without registers (e.g. facebook/dinov2-with-registers-base).
PyTorch layouts are converted here: Linear weights transposed, the patch convolution
flattened in (p, p, C) order, fused q/k/v and SwiGLU input weights split.
"""
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from mmpretrain import storage
from mmpretrain.encoders.vit import ViTConfig, VisionTransformer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _read_json(path: str) -> dict | None:
  return storage.read_json(path) if storage.exists(path) else None


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint in `directory`, as float32 numpy arrays."""
  index = _read_json(storage.join(directory, "model.safetensors.index.json"))
  files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
  tensors = {}
  for name in files:
    path = storage.join(directory, name)
    if not storage.exists(path):
      raise FileNotFoundError(f"{path} is missing: copy the whole checkpoint directory "
                              "(config.json and every .safetensors file)")
    with storage.local_file(path) as local, safe_open(local, framework="flax") as f:
      for key in f.keys():                          # reads bfloat16 too
        tensors[key] = np.asarray(f.get_tensor(key).astype(jnp.float32))
  return tensors


# The defaults of transformers' SiglipVisionConfig and Dinov2Config: Hub config.json files
# store only the fields that differ from them (tests/test_encoders.py checks these values).
HF_DEFAULTS = {
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                   hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    "dinov2": dict(hidden_size=768, mlp_ratio=4, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=14, hidden_act="gelu",
                   layer_norm_eps=1e-6, layerscale_value=1.0, use_swiglu_ffn=False),
}


def config_from_hf(hf: dict, preprocessor: dict | None = None) -> tuple[str, ViTConfig]:
  """(family, ViTConfig) from a transformers config.json (and preprocessor_config.json)."""
  family = hf.get("model_type", "")
  if family == "siglip":
    hf = hf.get("vision_config", {})
  family = {"siglip": "siglip", "siglip_vision_model": "siglip", "dinov2": "dinov2",
            "dinov2_with_registers": "dinov2"}.get(family)
  if family is None:
    raise ValueError(f"model_type {hf.get('model_type')!r} is not a supported vision encoder: "
                     "use a SigLIP (fixed-resolution) or DINOv2 checkpoint")
  hf = {**HF_DEFAULTS[family], **hf}
  if preprocessor:
    stats = dict(image_mean=tuple(preprocessor["image_mean"]),
                 image_std=tuple(preprocessor["image_std"]))
  else:
    stats = ({} if family == "siglip" else dict(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD))
  common = dict(image_size=hf["image_size"], patch_size=hf["patch_size"],
                width=hf["hidden_size"], depth=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], channels=hf.get("num_channels", 3),
                layer_norm_eps=hf["layer_norm_eps"], **stats)
  if family == "siglip":
    return family, ViTConfig(**common, mlp_dim=hf["intermediate_size"],
                             activation={"gelu_pytorch_tanh": "gelu_tanh"}.get(
                                 hf["hidden_act"], hf["hidden_act"]),
                             pool_head=hf.get("vision_use_head", True),
                             interpolation="bicubic")
  mlp_dim = int(hf["hidden_size"] * hf["mlp_ratio"])
  if hf.get("use_swiglu_ffn"):
    mlp_dim = (int(mlp_dim * 2 / 3) + 7) // 8 * 8
  return family, ViTConfig(**common, mlp_dim=mlp_dim, activation=hf["hidden_act"],
                           swiglu=hf.get("use_swiglu_ffn", False),
                           layer_scale=hf["layerscale_value"], cls_token=True,
                           num_registers=hf.get("num_register_tokens", 0),
                           interpolation="bicubic_antialias")


def linear_tensors(w: dict, name: str) -> dict:
  return {"kernel": w[f"{name}.weight"].T, "bias": w[f"{name}.bias"]}


def norm_tensors(w: dict, name: str) -> dict:
  return {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}


def _patch_embed(w: dict, name: str) -> dict:
  kernel = w[f"{name}.weight"]                     # [D, C, p, p]
  return {"kernel": kernel.transpose(2, 3, 1, 0).reshape(-1, kernel.shape[0]),
          "bias": w[f"{name}.bias"]}


def siglip_blocks(w: dict, depth: int) -> dict:
  """The encoder layers of a SigLIP tower: the vision and the text tower lay them out alike."""
  blocks = {}
  for i in range(depth):
    l = f"encoder.layers.{i}"
    blocks[i] = {"norm1": norm_tensors(w, f"{l}.layer_norm1"),
                 "norm2": norm_tensors(w, f"{l}.layer_norm2"),
                 "attn": {t: linear_tensors(w, f"{l}.self_attn.{s}_proj")
                          for t, s in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "out"))},
                 "mlp": {f: linear_tensors(w, f"{l}.mlp.{f}") for f in ("fc1", "fc2")}}
  return blocks


def _siglip(w: dict, cfg: ViTConfig) -> dict:
  blocks = siglip_blocks(w, cfg.depth)
  state = {"patch_embed": _patch_embed(w, "embeddings.patch_embedding"),
           "pos_embed": w["embeddings.position_embedding.weight"],
           "blocks": blocks, "norm": norm_tensors(w, "post_layernorm")}
  if cfg.pool_head:
    qkv_w = np.split(w["head.attention.in_proj_weight"], 3)
    qkv_b = np.split(w["head.attention.in_proj_bias"], 3)
    attn = {t: {"kernel": qkv_w[j].T, "bias": qkv_b[j]} for j, t in enumerate("qkv")}
    attn["o"] = linear_tensors(w, "head.attention.out_proj")
    state["head"] = {"probe": w["head.probe"], "attn": attn,
                     "norm": norm_tensors(w, "head.layernorm"),
                     "mlp": {f: linear_tensors(w, f"head.mlp.{f}") for f in ("fc1", "fc2")}}
  return state


def _dinov2(w: dict, cfg: ViTConfig) -> dict:
  blocks = {}
  for i in range(cfg.depth):
    l = f"encoder.layer.{i}"
    if cfg.swiglu:                      # fused [gate; up] input weights
      gate_w, up_w = np.split(w[f"{l}.mlp.weights_in.weight"], 2)
      gate_b, up_b = np.split(w[f"{l}.mlp.weights_in.bias"], 2)
      mlp = {"gate": {"kernel": gate_w.T, "bias": gate_b}, "fc1": {"kernel": up_w.T, "bias": up_b},
             "fc2": linear_tensors(w, f"{l}.mlp.weights_out")}
    else:
      mlp = {f: linear_tensors(w, f"{l}.mlp.{f}") for f in ("fc1", "fc2")}
    blocks[i] = {"norm1": norm_tensors(w, f"{l}.norm1"), "norm2": norm_tensors(w, f"{l}.norm2"),
                 "attn": {t: linear_tensors(w, f"{l}.attention.{s}")
                          for t, s in (("q", "attention.query"), ("k", "attention.key"),
                                       ("v", "attention.value"), ("o", "output.dense"))},
                 "ls1": w[f"{l}.layer_scale1.lambda1"], "ls2": w[f"{l}.layer_scale2.lambda1"],
                 "mlp": mlp}
  state = {"patch_embed": _patch_embed(w, "embeddings.patch_embeddings.projection"),
           "pos_embed": w["embeddings.position_embeddings"][0],
           "cls": w["embeddings.cls_token"][0], "blocks": blocks,
           "norm": norm_tensors(w, "layernorm")}
  if cfg.num_registers:
    state["registers"] = w["embeddings.register_tokens"][0]
  return state


CONVERTERS = {"siglip": _siglip, "dinov2": _dinov2}
_PREFIXES = re.compile(r"^(vision_model|dinov2_with_registers|dinov2)\.")


def hf_vision_config(directory: str) -> tuple[str, ViTConfig]:
  """(family, ViTConfig) of a Hugging Face checkpoint directory, read from its JSON files
  alone (no weights)."""
  hf = _read_json(storage.join(directory, "config.json"))
  if hf is None:
    raise FileNotFoundError(f"{directory}/config.json not found: pass the directory a "
                            "`save_pretrained` (or a hub download) wrote")
  return config_from_hf(hf, _read_json(storage.join(directory, "preprocessor_config.json")))


def load_hf_vision_encoder(directory: str, dtype=jnp.float32) -> VisionTransformer:
  """The encoder saved in a Hugging Face checkpoint directory (local or gs://), as a
  VisionTransformer."""
  family, cfg = hf_vision_config(directory)
  weights = {_PREFIXES.sub("", k): v for k, v in read_safetensors(directory).items()
             if not k.startswith("text_model.")}
  try:
    tree = CONVERTERS[family](weights, cfg)
  except KeyError as e:
    raise ValueError(f"{directory}: tensor {e} is missing for a {family} encoder of depth "
                     f"{cfg.depth}; is config.json from the same checkpoint?") from e
  model = nnx.eval_shape(lambda: VisionTransformer(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
  return fill_params(model, tree, directory)


def fill_params(model, tree: dict, directory: str):
  """`model` (abstract, from nnx.eval_shape) with every parameter taken from `tree` (nested
  by the module's attribute path), each checked for presence and shape."""
  graphdef, abstract = nnx.split(model)
  flat = dict(nnx.traversals.flatten_mapping(tree))
  values = {}
  for path, leaf in nnx.to_flat_state(abstract):
    if path not in flat:
      raise ValueError(f"{directory}: no tensor for {'.'.join(map(str, path))}")
    value = flat[path]
    if value.shape != leaf.shape:
      raise ValueError(f"{directory}: {'.'.join(map(str, path))} has shape {value.shape}, "
                       f"the config implies {leaf.shape}")
    values[path] = leaf.replace(jnp.asarray(value, leaf.dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(values))
