"""Encoder directories: one written by `mmpretrain train-encoder` (vit.json + Orbax params)
or a Hugging Face checkpoint (config.json + safetensors). `load_encoder` reads either."""
import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmpretrain import sharding, storage
from mmpretrain.encoders import hf_import
from mmpretrain.encoders.vit import ViTConfig, VisionTransformer

VIT_CONFIG, PARAMS = "vit.json", "params"


def save_module(directory: str, module: nnx.Module) -> None:
  """The module's state (every Variable: params and buffers such as latent statistics)
  under <directory>/params (Orbax), replacing an older one. Every process of a job calls
  it with the same module."""
  state = nnx.state(module)
  if jax.process_count() > 1:   # Orbax saves global arrays only: this copy, replicated
    everywhere = NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())
    state = sharding.host_to_global(state, everywhere)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(storage.join(storage.absolute(directory), PARAMS), state, force=True)


def save_with_config(directory: str, module: nnx.Module, config_file: str, fields: dict) -> None:
  """The module's state, then `config_file` (JSON `fields`, written by process 0), which
  marks a complete directory."""
  save_module(directory, module)
  if jax.process_index() == 0:
    storage.write_json(storage.join(directory, config_file), fields)


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
  save_with_config(directory, encoder, VIT_CONFIG, dataclasses.asdict(encoder.cfg))


def _is_hf(directory: str) -> bool:
  return storage.exists(storage.join(directory, "config.json"))


def encoder_config(directory: str) -> ViTConfig:
  """The architecture of the encoder in `directory` (train-encoder's or a Hugging Face
  checkpoint), read without its weights."""
  if _is_hf(directory):
    return hf_import.hf_vision_config(directory)[1]
  path = storage.join(directory, VIT_CONFIG)
  if not storage.exists(path):
    raise FileNotFoundError(
        f"{directory} is not an encoder directory (no {VIT_CONFIG} or config.json): run "
        "`mmpretrain train-encoder` or point to a Hugging Face SigLIP / DINOv2 checkpoint")
  fields = storage.read_json(path)
  return ViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def load_encoder(directory: str) -> VisionTransformer:
  if _is_hf(directory):
    return hf_import.load_hf_vision_encoder(directory)
  cfg = encoder_config(directory)
  return restore_module(directory, nnx.eval_shape(lambda: VisionTransformer(cfg,
                                                                             rngs=nnx.Rngs(0))))
