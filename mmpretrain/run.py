"""The run: a config made, once, into what data, training, evaluation and sampling share.

`Run(config, mesh)` holds the visual representation and its frozen weights, the packed
rows' layout (`spec`), the diffusion time shift, the model's graph and the parameters'
shardings. It has no optimizer: `train.step.Trainer` adds one for training, while sampling
and evaluating a checkpoint need only a Run and the parameters.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmpretrain import diffusion, sharding
from mmpretrain.batch import RowSpec
from mmpretrain.model.transformer import Transfusion
from mmpretrain.tokenizers.visual import (frame_latent_tokens, make_representation, patch_dim,
                                          row_spec, tokens_per_frame)


def build_model(config, seed: int, representation=None) -> Transfusion:
  """The unified model of `config`, sized for its representation's latent tokens."""
  grid = (representation or make_representation(config)).latent_grid
  patch = config.visual.patch_size
  return Transfusion(config.model, patch_dim(grid, patch), rngs=nnx.Rngs(seed),
                     tokens_per_frame=tokens_per_frame(grid, patch),
                     visual=config.data.max_frames > 0)


def abstract_arrays(shapes, shardings=None):
  """ShapeDtypeStructs of `shapes` with `shardings` (default: jax's first device): the
  target of a restore."""
  shardings = shardings or jax.tree.map(
      lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def time_shift(config, latent_grid: tuple[int, int, int]) -> float:
  """config.diffusion.time_shift, or the dimension-dependent default from the latent grid."""
  if config.diffusion.time_shift is not None:
    return config.diffusion.time_shift
  h, w, c = latent_grid
  return diffusion.default_time_shift(h * w * c)


class Run:
  """One config's representation, row layout, time shift and model graph, on one mesh."""

  def __init__(self, config, mesh=None, abstract_frozen: bool = False):
    """`mesh`: a (data, fsdp, expert, tensor) mesh from sharding.make_mesh, laid out by
    config.mesh.rules; None runs on jax's default device. `abstract_frozen`: hold only the
    shapes of the representation's weights, never read (compiling for a mesh of abstract
    devices, train/aot.py)."""
    self.config, self.mesh = config, mesh
    self.representation = make_representation(config)
    # The representation's weights (e.g. the RAE's): read, never trained.
    self.frozen = (self.representation.abstract_params() if abstract_frozen
                   else self.representation.load_params())
    if mesh is not None and not abstract_frozen:
      self.frozen = jax.device_put(self.frozen, sharding.replicated(mesh))
    self.spec: RowSpec = row_spec(config, self.representation.latent_grid)
    # The rows data builds: pixels, or the cached latent grids (visual.cached_latents).
    self.data_spec: RowSpec = (dataclasses.replace(
        self.spec, frame_shape=tuple(self.representation.latent_grid),
        frame_dtype=config.visual.latent_cache_dtype) if config.visual.cached_latents
        else self.spec)
    self.time_shift = time_shift(config, self.representation.latent_grid)
    self.graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: build_model(config, 0, self.representation)))
    self.param_sharding = (None if mesh is None else
                           sharding.state_shardings(abstract, mesh, config.mesh.rules))
    # How the samplers hold the parameters through their loops (generate/sample.py).
    self.sampling_param_sharding = (None if mesh is None else sharding.gathered_over_batch(
        self.param_sharding, config.mesh.rules))
    self._abstract = abstract

  def new_model(self, seed: int) -> Transfusion:
    return build_model(self.config, seed, self.representation)

  def init_params(self, seed: int):
    """Fresh parameters (what Trainer.init_state starts from), made directly in their shards."""
    return jax.jit(lambda: nnx.split(self.new_model(seed))[1],
                   out_shardings=self.param_sharding)()

  def model(self, params) -> Transfusion:
    """The model with these parameters (inside jit: no copy)."""
    return nnx.merge(self.graphdef, params)

  def abstract_params(self, shardings=None):
    """Shapes, dtypes and shardings (default: training's) of the parameters: the target
    of a restore."""
    return abstract_arrays(self._abstract, shardings or self.param_sharding)

  def latent_tokens(self, frames):
    """uint8 frames [B, F, H, W, C] -> the model's latent tokens [B, F·T, patch_dim]."""
    return frame_latent_tokens(self.representation, self.frozen, jnp.asarray(frames),
                               self.config.visual.patch_size)
