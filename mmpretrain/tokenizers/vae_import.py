"""diffusers `AutoencoderKL` checkpoints (a directory, local or gs://, with config.json and
diffusion_pytorch_model.safetensors, e.g. stabilityai/sd-vae-ft-mse fetched beforehand)
as an NNX `AutoencoderKL`. Nothing is downloaded from a hub.

Keys are renamed by pattern (both current `to_q/to_out.0` and older `query/proj_attn`
attention names) and tensors converted by what they become: conv kernels
[O, I, kh, kw] -> [kh, kw, I, O], linear weights transposed (older checkpoints store the
attention projections as 1×1 convs), GroupNorm weights -> scales.
"""
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from mmpretrain import storage
from mmpretrain.tokenizers.vae import AutoencoderKL, VAEConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
_RENAMES = [
    (r"\.(down|up)_blocks\.(\d+)\.resnets\.", r".levels.\2.resnets."),
    (r"\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv", r".levels.\2.resample.conv"),
    (r"\.mid_block\.resnets\.0\.", ".mid.resnet1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.resnet2."),
    (r"\.mid_block\.attentions\.0\.group_norm", ".mid.attention.norm"),
    (r"\.mid_block\.attentions\.0\.(to_q|query)", ".mid.attention.q"),
    (r"\.mid_block\.attentions\.0\.(to_k|key)", ".mid.attention.k"),
    (r"\.mid_block\.attentions\.0\.(to_v|value)", ".mid.attention.v"),
    (r"\.mid_block\.attentions\.0\.(to_out\.0|proj_attn)", ".mid.attention.out"),
    (r"\.conv_shortcut", ".shortcut"),
    (r"\.conv_norm_out", ".norm_out"),
]


def config_from_diffusers(hf: dict) -> VAEConfig:
  unsupported = [t for t in hf.get("down_block_types", []) + hf.get("up_block_types", [])
                 if t not in ("DownEncoderBlock2D", "UpDecoderBlock2D")]
  if unsupported or hf.get("act_fn", "silu") != "silu" or \
      hf.get("in_channels", 3) != hf.get("out_channels", 3):
    raise ValueError(f"unsupported AutoencoderKL variant (blocks {unsupported}, act_fn "
                     f"{hf.get('act_fn')!r}): only the Stable Diffusion architecture is")
  return VAEConfig(in_channels=hf.get("in_channels", 3), latent_channels=hf["latent_channels"],
                   block_out_channels=tuple(hf["block_out_channels"]),
                   layers_per_block=hf["layers_per_block"],
                   norm_num_groups=hf["norm_num_groups"],
                   mid_attention=hf.get("mid_block_add_attention", True),
                   use_quant_conv=hf.get("use_quant_conv", True),
                   use_post_quant_conv=hf.get("use_post_quant_conv", True),
                   scaling_factor=hf.get("scaling_factor", 1.0),
                   shift_factor=hf.get("shift_factor") or 0.0)


def _our_name(key: str) -> str:
  name = key
  for pattern, replacement in _RENAMES:
    name = re.sub(pattern, replacement, name)
  return name


def _convert(tensor: np.ndarray, leaf_shape: tuple, role: str) -> np.ndarray:
  if role == "kernel" and len(leaf_shape) == 4:          # conv
    return tensor.transpose(2, 3, 1, 0)
  if role == "kernel":                                   # linear (maybe stored as 1×1 conv)
    return tensor.reshape(tensor.shape[0], -1).T
  return tensor


def load_diffusers_vae(directory: str) -> AutoencoderKL:
  path = storage.join(directory, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} not found: pass a diffusers AutoencoderKL directory "
                            "(save_pretrained or a hub download)")
  cfg = config_from_diffusers(storage.read_json(path))
  weights = storage.join(directory, WEIGHTS)
  if not storage.exists(weights):
    raise FileNotFoundError(f"{weights} is missing")
  with storage.local_file(weights) as local, safe_open(local, framework="flax") as f:
    tensors = {_our_name(k): np.asarray(f.get_tensor(k).astype(jnp.float32))  # f16/bf16 too
               for k in f.keys()}
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0))))
  values = {}
  for path_, leaf in nnx.to_flat_state(abstract):
    *module, role = map(str, path_)
    key = ".".join(module) + (".bias" if role == "bias" else ".weight")
    if key not in tensors:
      raise ValueError(f"{weights}: no tensor for {'.'.join(map(str, path_))} (looked for "
                       f"{key!r} after renaming); is config.json from this checkpoint?")
    value = _convert(tensors[key], leaf.shape, role)
    if value.shape != leaf.shape:
      raise ValueError(f"{weights}: {key} becomes shape {value.shape}, the config implies "
                       f"{leaf.shape}")
    values[path_] = leaf.replace(jnp.asarray(value, leaf.dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(values))
