"""Encoder directories: one written by `mmpretrain train-encoder` (vit.json + Orbax params)
or a Hugging Face checkpoint (config.json + safetensors). `load_encoder` reads either."""
import dataclasses

import jax
import orbax.checkpoint as ocp
from flax import nnx

from mmpretrain import storage
from mmpretrain.encoders import hf_import
from mmpretrain.encoders.vit import ViTConfig, VisionTransformer

VIT_CONFIG, PARAMS = "vit.json", "params"


def save_module(directory: str, module: nnx.Module) -> None:
  """The module's state (every Variable: params and buffers such as latent statistics)
  under <directory>/params (Orbax), replacing an older one."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(storage.join(storage.absolute(directory), PARAMS), nnx.state(module),
                      force=True)


def restore_module(directory: str, abstract: nnx.Module) -> nnx.Module:
  """A module shaped like `abstract` (from nnx.eval_shape) with the state saved there."""
  graphdef, state = nnx.split(abstract)
  # Onto this process's first device: the sharding saved with the state names a device of
  # the process that saved it, which another process of a multi-host job cannot restore to.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                       state)
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(storage.join(storage.absolute(directory), PARAMS), state)
  return nnx.merge(graphdef, state)


def save_encoder(directory: str, encoder: VisionTransformer) -> None:
  """Params first, vit.json last: the config file marks a complete directory."""
  save_module(directory, encoder)
  storage.write_json(storage.join(directory, VIT_CONFIG), dataclasses.asdict(encoder.cfg))


def load_encoder(directory: str) -> VisionTransformer:
  if storage.exists(storage.join(directory, "config.json")):
    return hf_import.load_hf_vision_encoder(directory)
  path = storage.join(directory, VIT_CONFIG)
  if not storage.exists(path):
    raise FileNotFoundError(
        f"{directory} is not an encoder directory (no {VIT_CONFIG} or config.json): run "
        "`mmpretrain train-encoder` or point to a Hugging Face SigLIP / DINOv2 checkpoint")
  fields = storage.read_json(path)
  cfg = ViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
  return restore_module(directory, nnx.eval_shape(lambda: VisionTransformer(cfg,
                                                                             rngs=nnx.Rngs(0))))
