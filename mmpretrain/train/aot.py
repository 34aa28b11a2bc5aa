"""The train step compiled ahead of time for a TPU topology, on any machine (`mmpretrain
compile`): does a config fit the chip's memory, and how fast does the TPU cost model say
it runs?

libtpu (`pip install -e '.[tpu]'`) describes a topology's chips as abstract devices
(jax.experimental.topologies). The step is lowered over them with the config's mesh and
logical-axis rules and compiled into a real TPU executable: its memory analysis gives the
bytes each chip holds, its cost analysis the FLOPs and the cost model's time.

XLA's cost analysis counts a loop body once, so a scanned step under-reports. The time
comes from two small unrolled compiles instead: one and two layers give the cost of the
step outside the layers and of one layer, and the estimate is outside + layers × one; a
stack of dense and MoE layers adds a dense + MoE pair for the other kind (estimated_cost).
The chunked attention's loops are costed apart, as the kernel's blocks they run
(chunked_attention_correction).
"""
import copy
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding

from mmpretrain import sharding
from mmpretrain.config import tokens_per_step
from mmpretrain.hardware import CHIPS
from mmpretrain.batch import DEVICE_FIELDS
from mmpretrain.data.synthetic import interleaved_batch
from mmpretrain.encoders.vit import VisionTransformer
from mmpretrain.generate import sample
from mmpretrain.model import attention, modality_ffn, moe
from mmpretrain.model.chunked_attention import KeyRanges, chunk_bounds, pad_ranges
from mmpretrain.model.masks import key_ranges
from mmpretrain.model.transformer import is_moe_layer, model_remat_policy
from mmpretrain.run import Run
from mmpretrain.scaling.flops import train_flops_per_token
from mmpretrain.stages import rae as rae_stage
from mmpretrain.stages.loop import StageTrainer
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.tokenizers.visual import make_representation, patch_dim, row_spec
from mmpretrain.train.evaluate import with_eval_batch
from mmpretrain.train.step import RunLoss, Trainer

def parse_topology(name: str) -> tuple[str, str]:
  """'v5p-128' (GCP's accelerator type) or 'v5p:4x4x4' -> ('v5p', '4x4x4')."""
  generation, sep, size = name.partition("-") if "-" in name else name.partition(":")
  chip = CHIPS.get(generation)
  if chip is None or not sep:
    raise ValueError(f"--topology={name!r}: use <generation>-<cores> or <generation>:<shape> "
                     f"with a generation of {sorted(CHIPS)}, e.g. v5p-128 or v5e:4x4")
  if sep == ":":
    return generation, size
  cores = int(size) if size.isdigit() else 0
  chips = cores // chip.cores_per_chip
  if cores % chip.cores_per_chip or chips not in chip.grids:
    raise ValueError(f"--topology={name!r}: {generation} slices have "
                     f"{sorted(c * chip.cores_per_chip for c in chip.grids)} cores")
  return generation, chip.grids[chips]


class NoTpuCompiler(RuntimeError):
  """libtpu is missing or does not know the topology."""


class DoesNotFit(RuntimeError):
  """The TPU compiler ran out of HBM for the step (its message says how much it needed)."""


def abstract_devices(topology: str, num_slices: int = 1) -> tuple[str, list]:
  """The generation and abstract TPU devices of a topology (needs libtpu, not a TPU)."""
  generation, shape = parse_topology(topology)
  if importlib.util.find_spec("libtpu") is None:
    raise NoTpuCompiler("compiling for a TPU needs libtpu: pip install -e '.[tpu]' "
                        "(make install-tpu)")
  # Compiling touches no chip: let several processes load libtpu at once (it otherwise
  # takes a lock meant for a TPU host's devices), and tell it which accelerator this is
  # rather than have it ask a TPU VM's metadata server (it logs errors when there is none).
  chips = int(np.prod([int(n) for n in shape.split("x")]))
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  cores = chips * CHIPS[generation].cores_per_chip
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{generation}-{cores}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{generation}:{shape}", chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1), num_slices=num_slices)
  except (RuntimeError, ValueError) as e:
    raise NoTpuCompiler(f"libtpu cannot describe {generation}:{shape}: {e}") from e
  return generation, list(desc.devices)


def for_platform(config, platform: str):
  """A copy of `config` whose `auto` choices (attention kernel, MoE dispatch, modality
  FFNs) are those of `platform`, not of the machine compiling it."""
  config = copy.deepcopy(config)
  config.model.attention_impl = attention.resolve(config.model.attention_impl, platform)
  config.model.moe.dispatch = moe.resolve_dispatch(config.model.moe.dispatch)
  config.model.modality_ffn_impl = modality_ffn.resolve(config.model.modality_ffn_impl,
                                                        platform)
  return config


def typical_row(config, spec) -> dict:
  """One packed row of the shape the step is compiled for: a document of text with half
  of `max_frames` images spread through it."""
  images = max(1, spec.max_frames // 2) if spec.max_frames else 0
  text = max(1, spec.seq_len - images * (spec.tokens_per_frame + 2)) // 2
  return interleaved_batch(spec, 1, text, images, config.model.vocab_size)


def abstract_batch(config, spec, mesh) -> dict:
  """ShapeDtypeStructs of a global batch laid out by `spec`, sharded like the training
  batches."""
  row = typical_row(config, spec)
  where = sharding.batch_sharding(mesh, config.mesh.rules)
  return {k: jax.ShapeDtypeStruct((config.data.batch_size, *row[k].shape[1:]), row[k].dtype,
                                  sharding=where) for k in DEVICE_FIELDS}


def abstract_run(config, devices):
  """The run of `config` on its mesh over `devices`, its frozen weights' shapes (replicated)
  and an abstract batch of config.data.batch_size rows."""
  mesh = sharding.make_mesh(config.mesh, devices)
  run = Run(config, mesh, abstract_frozen=True)
  replicated = sharding.replicated(mesh)
  frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        run.frozen)
  return run, frozen, abstract_batch(config, run.data_spec, mesh)


def compile_step(config, devices, for_cost: bool = False):
  """The train step of `config` compiled over `devices`: (executable, seconds); with
  `for_cost`, as cost_options compiles it."""
  start = time.perf_counter()
  run, frozen, batch = abstract_run(config, devices)
  trainer = Trainer(run, np.ones(config.model.vocab_size, np.float32))
  lowered = trainer.lower_step(trainer.abstract_state(), batch, frozen)
  return _compile(lowered, cost_options(devices) if for_cost else None), \
      time.perf_counter() - start


def compile_eval_step(config, devices, for_cost: bool = False):
  """The held-out loss step (RunLoss.eval_sums: one forward pass summing a batch's
  losses) compiled over `devices` for `config` as with_eval_batch makes it: the batch's
  rows split like training's, the parameters in training's shardings."""
  start = time.perf_counter()
  run, frozen, batch = abstract_run(config, devices)
  loss = RunLoss(run, np.ones(config.model.vocab_size, np.float32))
  lowered = loss.lower_eval_sums(run.abstract_params(), batch, frozen)
  return _compile(lowered, cost_options(devices) if for_cost else None), \
      time.perf_counter() - start


# XLA:TPU runs a matmul whose weights FSDP gathers (or whose gradient it scatters) as a
# loop over windows of the gathered operand (a collective matmul), and the cost analysis
# counts a loop body once, so a layer's FLOPs came out well short of what it runs
# (docs/tpu.md). The compiles that price the step turn those loops off, so every matmul is
# counted whole and its gather priced as a collective of its own (a real step overlaps
# the two: the estimate errs slow there). The memory figures come from the real program.
_WHOLE_MATMULS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                  "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def cost_options(devices) -> dict | None:
  """Compiler options of the compiles whose cost analysis prices a step on `devices`."""
  return _WHOLE_MATMULS if devices[0].platform == "tpu" else None


def _compile(lowered, options: dict | None = None):
  try:
    return lowered.compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise DoesNotFit(str(e).split("RESOURCE_EXHAUSTED: ")[-1].split("\n")[0]) from e


def compile_denoising_step(config, devices, for_cost: bool = False):
  """One denoising step of the image sampler compiled over `devices`: (executable,
  seconds). It is the sampler's inner loop (generate/sample.block_velocity, run
  diffusion.sample_steps times per image): a guided visual block of one frame's tokens at
  the end of a full row of cached context, for data.batch_size rows (half conditional,
  half their unconditional twins), with the parameters as the sampler holds them through
  its loop (gathered over the batch axes once per image: run.sampling_param_sharding)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  run = Run(config, mesh, abstract_frozen=True)
  spec, rows = run.spec, config.data.batch_size
  length = spec.tokens_per_frame
  dim = patch_dim(run.representation.latent_grid, config.visual.patch_size)
  row = typical_row(config, spec)
  start = int(np.argmax(row["visual_loss_mask"][0]))
  block = {k: np.repeat(row[k][:, start:start + length], rows, axis=0)
           for k in sample.ID_FIELDS}
  params = run.abstract_params(run.sampling_param_sharding)
  cache = jax.eval_shape(lambda p: run.model(p).init_cache(rows, spec.seq_len), params)
  def by_rows(x, axis):           # the rows split like a training batch
    names = [None] * x.ndim
    names[axis] = "batch"
    where = NamedSharding(mesh, sharding.partition_spec(tuple(names), config.mesh.rules,
                                                        mesh, x.shape))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where)
  cache = cache.replace(
      layers=jax.tree.map(lambda x: by_rows(x, 1), cache.layers),
      segment_ids=by_rows(cache.segment_ids, 0), block_ids=by_rows(cache.block_ids, 0))
  block = {k: by_rows(jax.ShapeDtypeStruct(v.shape, v.dtype), 0) for k, v in block.items()}
  z = by_rows(jax.ShapeDtypeStruct((rows // 2, length, dim), jnp.float32), 0)
  def step(params, cache, block, z):
    return sample.block_velocity(run, params, cache, block, spec.seq_len - length, z,
                                 jnp.float32(0.5), guided=True)
  start_s = time.perf_counter()
  lowered = jax.jit(step).lower(params, cache, block, z)
  return _compile(lowered, cost_options(devices) if for_cost else None), \
      time.perf_counter() - start_s


def step_cost(config, devices) -> dict:
  """Cost analysis of the train step of `config` compiled over `devices`."""
  return _cost(compile_step(config, devices, for_cost=True)[0])


def eval_step_cost(config, devices) -> dict:
  return _cost(compile_eval_step(config, devices, for_cost=True)[0])


def denoising_step_cost(config, devices) -> dict:
  return _cost(compile_denoising_step(config, devices, for_cost=True)[0])


def _cost(executable) -> dict:
  analysis = executable.cost_analysis()
  if isinstance(analysis, (list, tuple)):      # older jax: one dict per computation
    analysis = analysis[0]
  return analysis


def unrolled(config, layers: int, dense_layers: int | None = None):
  """`config` with `layers` unrolled layers (with `dense_layers`, that many dense layers
  and then only MoE ones). The chunked attention's loops would be counted once as well,
  so these hold the dense attention, and estimated_cost swaps its cost for the chunked
  kernel's."""
  small = copy.deepcopy(config)
  small.model.num_layers, small.model.scan_layers = layers, False
  if dense_layers is None:
    small.model.moe.first_dense_layers = min(small.model.moe.first_dense_layers, layers - 1)
  else:
    small.model.moe.first_dense_layers, small.model.moe.every_n_layers = dense_layers, 1
  if small.model.attention_impl == "chunked":
    small.model.attention_impl = "xla"
  return small


def attention_shard_shape(config, devices, length: int, heads: int) -> tuple:
  """One chip's share [rows, length, heads, head_dim] of a layer's queries (or keys)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  shape = (config.data.batch_size, length, heads, config.model.head_dim)
  where = NamedSharding(mesh, sharding.partition_spec(("batch", None, "heads", None),
                                                      config.mesh.rules, mesh, shape))
  return where.shard_shape(shape)


def lower_attention(config, devices, impl: str, length: int, chunk: int | None = None):
  """One layer's attention at `length` tokens (`impl` in chunks or blocks of `chunk`), on
  one chip's share of the rows and heads, lowered as a layer runs it: its output read by
  the rest of the step, its backward under the layer's remat policy (which may run its
  forward again)."""
  m = config.model
  q_shape = attention_shard_shape(config, devices, length, m.num_heads)
  kv_shape = attention_shard_shape(config, devices, length, m.num_kv_heads)
  rows = q_shape[0]
  def attend(q, k, v, start, end):
    return attention.attend(q, k, v, KeyRanges(start, end), impl, chunk or length)
  policy = model_remat_policy(m)
  if policy is not None:
    attend = jax.checkpoint(attend, policy=policy)
  def loss(*args):            # squared, so the backward needs the forward's output
    return jnp.sum(jnp.square(attend(*args).astype(jnp.float32)))
  one_chip = SingleDeviceSharding(devices[0])
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one_chip)
  dtype = jnp.dtype(m.dtype)
  args = [spec(q_shape, dtype), spec(kv_shape, dtype), spec(kv_shape, dtype),
          spec((rows, length), jnp.int32), spec((rows, length), jnp.int32)]
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args)


def attention_cost(config, devices, impl: str, length: int, chunk: int | None = None) -> dict:
  """Cost analysis of lower_attention's program (`xla`, or `chunked`, whose loops the
  analysis counts once)."""
  return _cost(_compile(lower_attention(config, devices, impl, length, chunk),
                        cost_options(devices)))


def chunk_pairs(row: dict, chunk: int) -> int:
  """The (query chunk, key chunk) blocks the chunked kernel computes for packed `row`s."""
  ranges = key_ranges(jnp.asarray(row["segment_ids"]), jnp.asarray(row["block_ids"]))
  first, last = chunk_bounds(*pad_ranges(ranges, chunk), chunk)
  return int(np.sum(np.asarray(last) - np.asarray(first)))


def chunked_attention_kernel_cost(config, devices) -> dict:
  """Per layer and chip, what the chunked kernel costs (`flops`, `optimal_seconds`) on the
  config's typical row, with the `pairs` of chunks it computes and its `block`'s cost.
  Its loops run one c×c block of scores for each (query chunk, key chunk) pair that some
  query of the chunk can see (c = model.attention_chunk), around work in proportion to
  the row's length (layouts, the softmax backward's row sums). The analysis counts a loop
  body once: the kernel over a whole row holds all of the latter and one block, the
  kernel over one chunk a chunk's share of the latter and one block, and the difference
  splits them."""
  spec = row_spec(config)
  chunk = min(config.model.attention_chunk, spec.seq_len)
  pairs = chunk_pairs(typical_row(config, spec), chunk)
  row = attention_cost(config, devices, "chunked", spec.seq_len, chunk)
  if chunk == spec.seq_len:                   # one block: each loop runs once
    return {"flops": row["flops"], "optimal_seconds": row["optimal_seconds"], "pairs": 1,
            "block_seconds": row["optimal_seconds"]}
  one = attention_cost(config, devices, "chunked", chunk, chunk)
  per_chunk = {key: (row[key] - one[key]) / (spec.seq_len / chunk - 1)
               for key in ("flops", "optimal_seconds")}
  cost = {key: row[key] + (pairs - 1) * (one[key] - per_chunk[key])
          for key in ("flops", "optimal_seconds")}
  return {**cost, "pairs": pairs,
          "block_seconds": one["optimal_seconds"] - per_chunk["optimal_seconds"]}


def chunked_attention_correction(config, devices) -> dict:
  """Per layer, what the chunked kernel costs beyond the dense attention the unrolled
  compiles hold."""
  kernel = chunked_attention_kernel_cost(config, devices)
  dense = attention_cost(config, devices, "xla", row_spec(config).seq_len)
  return {key: kernel[key] - dense[key] for key in ("flops", "optimal_seconds")}


def layer_extrapolation(config, cost_of) -> dict:
  """FLOPs and optimal_seconds of a program over all of config's layers from small
  unrolled compiles (`cost_of(config)` -> cost analysis): one and two layers of one kind
  give the program outside the layers and that kind's layer; with dense and MoE layers
  both in the stack, a dense + MoE pair gives the other kind's."""
  m = config.model
  moe = sum(is_moe_layer(m, i) for i in range(m.num_layers))
  dense = m.num_layers - moe
  if moe:
    one, two = cost_of(unrolled(config, 1, 0)), cost_of(unrolled(config, 2, 0))
    pair = cost_of(unrolled(config, 2, 1)) if dense else one
  else:
    one, two = cost_of(unrolled(config, 1)), cost_of(unrolled(config, 2))
    pair = one
  def total(key):
    layer = two[key] - one[key]                   # a layer of the kind `one` holds
    other = pair[key] - one[key]                  # a dense layer beside it (MoE stacks)
    outside = one[key] - layer
    return (outside + moe * layer + dense * other) if moe else outside + dense * layer
  return {"flops": total("flops"), "optimal_seconds": total("optimal_seconds")}


def estimated_cost(config, devices) -> dict:
  """FLOPs and optimal_seconds of the whole train step (layer_extrapolation), the chunked
  attention costed apart (chunked_attention_correction)."""
  cost = layer_extrapolation(config, lambda c: step_cost(c, devices))
  if config.model.attention_impl == "chunked":
    correction = chunked_attention_correction(config, devices)
    cost = {key: value + config.model.num_layers * correction[key]
            for key, value in cost.items()}
  return cost


def sampler_report(config, devices, chip) -> dict:
  """Memory per device and the cost model's time of one denoising step for
  config.data.batch_size rows (the sampler's per-step cost; an image takes
  diffusion.sample_steps of them)."""
  rows = {"rows": config.data.batch_size}
  try:
    executable, compile_s = compile_denoising_step(config, devices)
  except DoesNotFit as e:
    return {**rows, "fits": False, "compiler": str(e)}
  per_device = _per_device_bytes(executable.memory_analysis())
  cost = layer_extrapolation(config, lambda c: denoising_step_cost(c, devices))
  return {**rows, "per_device_bytes": per_device, "fits": per_device <= chip.hbm_bytes,
          "step_seconds": cost["optimal_seconds"], "compile_s": compile_s}


def _per_device_bytes(memory) -> int:
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def _memory(memory, chip) -> dict:
  """A compiled program's memory per chip (XLA's memory analysis) against the chip's HBM."""
  per_device = _per_device_bytes(memory)
  return {"argument_bytes": memory.argument_size_in_bytes,
          "output_bytes": memory.output_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
          "alias_bytes": memory.alias_size_in_bytes, "per_device_bytes": per_device,
          "hbm_headroom": 1.0 - per_device / chip.hbm_bytes,
          "fits": per_device <= chip.hbm_bytes}


def _slice(topology: str, num_slices: int, program: str):
  """The abstract devices of a TPU slice, its chip, and the fields that name them in a
  report of `program`."""
  generation, devices = abstract_devices(topology, num_slices)
  chip = CHIPS[generation]
  return devices, chip, {
      "program": program, "topology": topology,
      "tpu": f"{generation}:{parse_topology(topology)[1]}", "num_slices": num_slices,
      "chips": len(devices), "hbm_bytes": chip.hbm_bytes}


def _mfu(model_flops: float, seconds: float, devices, chip) -> float | None:
  """Model FLOPs over the cost model's time at the chips' bf16 peak; None where the small
  compiles' times do not add up to a positive time (seen for capacity-dispatch MoE layers
  at scale): no MFU rather than a wrong one."""
  return model_flops / (seconds * len(devices) * chip.peak_bf16_flops) if seconds > 0 else None


def report(config, topology: str, num_slices: int = 1) -> dict:
  """Memory per device (the config's own step) and the cost model's time and MFU, and the
  same for one denoising step of the image sampler (sampler_report, its fields prefixed
  `sampler_`)."""
  devices, chip, where = _slice(topology, num_slices, "train")
  config = for_platform(config, "tpu")
  start = time.perf_counter()
  try:
    executable, compile_s = compile_step(config, devices)
  except DoesNotFit as e:
    return {**where, "fits": False, "compiler": str(e),
            "compile_s": time.perf_counter() - start}
  cost = estimated_cost(config, devices)
  tokens = tokens_per_step(config)
  model_flops = train_flops_per_token(config) * tokens
  # A text-only config (no frames in a row) draws no images.
  sampler = sampler_report(config, devices, chip) if config.data.max_frames else {}
  return {
      **where, **_memory(executable.memory_analysis(), chip),
      # xla_flops is per device: the executable is one device's program.
      "model_flops": model_flops, "xla_flops": cost["flops"],
      "optimal_seconds": cost["optimal_seconds"],
      "cost_model_mfu": _mfu(model_flops, cost["optimal_seconds"], devices, chip),
      "tokens_per_step": tokens, "compile_s": compile_s,
      **{f"sampler_{key}": value for key, value in sampler.items()}}


def eval_report(config, topology: str, num_slices: int = 1) -> dict:
  """The held-out loss step (what `mmpretrain eval` and training's evaluations run for
  every held-out batch) compiled for a TPU slice: eval.batch_size rows (with_eval_batch)
  split over the batch axes, the parameters in training's shardings. Memory per chip, the
  cost model's time of a batch and its MFU (model FLOPs of the forward pass: a third of
  training's per token). The time comes from layer_extrapolation, whose unrolled compiles
  hold XLA's dense attention: the chunked kernel's forward, compiled alone, does not price
  as it runs inside a layer (docs/tpu.md), so where the step runs the kernel the estimate
  is the dense attention's."""
  devices, chip, where = _slice(topology, num_slices, "eval")
  config = for_platform(with_eval_batch(config), "tpu")
  where["rows"] = config.data.batch_size
  start = time.perf_counter()
  try:
    executable, compile_s = compile_eval_step(config, devices)
  except DoesNotFit as e:
    return {**where, "fits": False, "compiler": str(e),
            "compile_s": time.perf_counter() - start}
  cost = layer_extrapolation(config, lambda c: eval_step_cost(c, devices))
  tokens = tokens_per_step(config)
  model_flops = train_flops_per_token(config) / 3 * tokens
  return {**where, **_memory(executable.memory_analysis(), chip), "model_flops": model_flops,
          "xla_flops": cost["flops"], "optimal_seconds": cost["optimal_seconds"],
          "cost_model_mfu": _mfu(model_flops, cost["optimal_seconds"], devices, chip),
          "tokens_per_step": tokens, "compile_s": compile_s}


def sample_report(config, topology: str, num_slices: int = 1) -> dict:
  """One denoising step of the image sampler (sampler_report) compiled for a TPU slice
  for eval.batch_size rows (with_eval_batch), half of them classifier-free guidance's
  unconditional twins: memory per chip and the cost model's time of the step."""
  devices, chip, where = _slice(topology, num_slices, "sample")
  config = for_platform(with_eval_batch(config), "tpu")
  if not config.data.max_frames:
    raise ValueError("the config's rows hold no frames (data.max_frames=0): it draws no "
                     "images")
  step = sampler_report(config, devices, chip)
  if "per_device_bytes" in step:
    step["hbm_headroom"] = 1.0 - step["per_device_bytes"] / chip.hbm_bytes
  return {**where, **step}


def latent_cache_report(config, topology: str, num_slices: int = 1,
                        frames_per_chip: int | None = None) -> dict:
  """The latent cache's encode step (stages/latent_cache.encode_step, what `prepare` runs
  under visual.cached_latents) compiled for a TPU slice: uint8 frames, `frames_per_chip`
  (default: the stage's FRAMES_PER_DEVICE) on every chip, the representation's weights
  replicated. Memory per chip, and the cost model's time as images a second a chip (the
  encoders' layers are unrolled, so the analysis counts them all)."""
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.stages.latent_cache import FRAMES_PER_DEVICE, encode_step
  devices, chip, where = _slice(topology, num_slices, "latent_cache")
  per_chip = frames_per_chip or FRAMES_PER_DEVICE
  representation = make_representation(config)
  mesh = jax.sharding.Mesh(np.array(devices), ("frames",))
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        representation.abstract_params())
  data = config.data
  frames = jax.ShapeDtypeStruct((per_chip * len(devices), data.image_size, data.image_size,
                                 data.image_channels), jnp.uint8,
                                sharding=NamedSharding(mesh, jax.sharding.PartitionSpec("frames")))
  where.update(frames_per_chip=per_chip, latent_grid=list(representation.latent_grid))
  start = time.perf_counter()
  try:
    executable = _compile(encode_step(representation, mesh).lower(params, frames))
  except DoesNotFit as e:
    return {**where, "fits": False, "compiler": str(e),
            "compile_s": time.perf_counter() - start}
  compile_s = time.perf_counter() - start
  cost = _cost(executable)
  seconds = cost["optimal_seconds"]
  return {
      **where, **_memory(executable.memory_analysis(), chip),
      "xla_flops": cost["flops"], "optimal_seconds": seconds,
      "images_per_s_per_chip": per_chip / seconds if seconds > 0 else None,
      "compile_s": compile_s}


def lower_train_rae_step(config, devices):
  """The RAE decoder's train step (what `mmpretrain train-rae` runs, stages/rae.py) lowered
  over `devices` on the config's mesh: data.batch_size uint8 images split like its batches,
  the frozen encoder replicated (its shapes from config.rae.encoder: an encoder directory,
  or an RAE directory's rae.json), the decoder (and critic) with their AdamW state split
  over the fsdp axes."""
  encoder = rae_lib.encoder_config(rae_stage.encoder_directory(config))
  training = nnx.eval_shape(lambda: rae_stage.rae_training(
      config, VisionTransformer(encoder, rngs=nnx.Rngs(0))))
  trainer = StageTrainer(config, sharding.make_mesh(config.mesh, devices), training,
                         rae_stage.make_rae_loss(config.rae), rae_stage.TRAINED)
  data = config.data
  rows = lambda *shape, dtype: jax.ShapeDtypeStruct((data.batch_size, *shape), dtype,
                                                     sharding=trainer.batch_sharding)
  return trainer.lower_step({
      "images": rows(data.image_size, data.image_size, data.image_channels, dtype=jnp.uint8),
      "captions": rows(1, dtype=jnp.int32), "label": rows(dtype=jnp.int32)})


def train_rae_report(config, topology: str, num_slices: int = 1) -> dict:
  """The RAE decoder's train step (lower_train_rae_step) compiled for a TPU slice: memory
  per chip, and the cost model's time of a step and images a second a chip (the ViTs'
  layers are unrolled, so the analysis counts them all)."""
  devices, chip, where = _slice(topology, num_slices, "train_rae")
  where["images_per_step"] = images = config.data.batch_size
  start = time.perf_counter()
  lowered = lower_train_rae_step(config, devices)
  try:
    executable = _compile(lowered)
  except DoesNotFit as e:
    return {**where, "fits": False, "compiler": str(e),
            "compile_s": time.perf_counter() - start}
  compile_s = time.perf_counter() - start
  cost = _cost(_compile(lowered, cost_options(devices)))
  seconds = cost["optimal_seconds"]
  return {**where, **_memory(executable.memory_analysis(), chip), "xla_flops": cost["flops"],
          "optimal_seconds": seconds,
          "images_per_s_per_chip": images / len(devices) / seconds if seconds > 0 else None,
          "compile_s": compile_s}


def advice(config) -> str:
  """What to change when a step does not fit, in the config's own keys."""
  m = config.model
  steps = []
  if m.remat != "full":
    steps.append(f"--config.model.remat=full (now {m.remat})")
  steps.append(f"a larger --config.mesh.fsdp (now {config.mesh.fsdp})")
  steps.append(f"more --config.optimizer.grad_accum_steps (now "
               f"{config.optimizer.grad_accum_steps}: microbatches hold fewer activations)")
  return "; or ".join(steps)


def stage_advice(config) -> str:
  """What to change when a representation stage's step does not fit."""
  return (f"a larger --config.mesh.fsdp (now {config.mesh.fsdp}); or a smaller "
          f"--config.data.batch_size (now {config.data.batch_size})")
