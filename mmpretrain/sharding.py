"""The device mesh, logical-axis rules, and where the step's arrays live.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `expert`, …; see
model/layers.py) and the model pins a few activations with `constrain`. `config.mesh.rules`
maps each logical name onto zero or more mesh axes of the `(data, fsdp, expert, tensor)`
mesh that `config.mesh.<axis>` sizes, so changing the parallelism is a config change:

  --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.expert=2

Each process loads the rows of the global batch its devices hold (`process_rows`; the
data shards of data/pipeline.py cover them); `global_batch` joins them into jax.Arrays
split along the `batch` rule with `jax.make_array_from_process_local_data`.
"""
import contextlib
import math
import threading

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")


class ShardingError(ValueError):
  """A mesh or rule that cannot hold the model or batch; the message names the key to fix."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """The (data, fsdp, expert, tensor) sizes for `num_devices`; one -1 takes the rest."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  fill = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes):
    raise ShardingError(f"config.mesh: sizes {dict(zip(MESH_AXES, sizes))} must be positive, "
                        "with at most one -1 (the devices the others leave)")
  fixed = math.prod(size for size in sizes if size > 0)
  if fill:
    if num_devices % fixed:
      raise ShardingError(f"config.mesh: {num_devices} devices do not split into "
                          f"{fixed} for the fixed axes; make their product divide it")
    sizes[MESH_AXES.index(fill[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ShardingError(f"config.mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                        f"devices but there are {num_devices}; set one axis to -1")
  return tuple(sizes)


def device_grid(mesh_config, devices) -> np.ndarray:
  """Devices laid out on the mesh. With `mesh.dcn_data` = S > 1 (a multislice run) the data
  axis is S slices × data/S inside each: the only collective that crosses the slow
  data-center network is the data-parallel gradient sum; everything else stays on ICI.
  Slices are the devices' `slice_index` (TPU), else their process."""
  shape = mesh_shape(mesh_config, len(devices))
  slices = int(mesh_config.dcn_data)
  if slices == 1:
    return mesh_utils.create_device_mesh(shape, devices)
  if slices < 1 or shape[0] % slices:
    raise ShardingError(f"config.mesh.dcn_data={slices} must divide the data axis "
                        f"({shape[0]}): the slices split it")
  per_slice = (shape[0] // slices, *shape[1:])
  return mesh_utils.create_hybrid_device_mesh(
      per_slice, (slices,) + (1,) * (len(shape) - 1), devices,
      process_is_granule=not hasattr(devices[0], "slice_index"))


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """The (data, fsdp, expert, tensor) mesh over `devices` (all of them by default).

  Axis types are Auto so the compiler (GSPMD) propagates shardings from the parameters,
  the batch and `constrain`.
  """
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(device_grid(mesh_config, devices), MESH_AXES,
                           axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_axes(rules, logical_name):
  """Mesh axes (a tuple, possibly empty) that one logical axis name is split over."""
  if logical_name is None or logical_name not in rules:
    return ()
  axes = rules[logical_name]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  unknown = [a for a in axes if a not in MESH_AXES]
  if unknown:
    raise ShardingError(f"config.mesh.rules.{logical_name}: unknown mesh axes {unknown}; "
                        f"use names from {list(MESH_AXES)}")
  return axes


def partition_spec(logical: tuple, rules, mesh=None, shape=None) -> PartitionSpec:
  """Logical names -> PartitionSpec. A mesh axis already taken by an earlier dimension, or
  of size 1 in `mesh`, is skipped; with `shape`, a dimension the mesh axes do not divide
  is an error naming the rule to change."""
  used, spec = set(), []
  for dim, name in enumerate(logical):
    axes = tuple(a for a in mesh_axes(rules, name) if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
    if shape is not None and mesh is not None:
      ways = math.prod(mesh.shape[a] for a in axes)
      if shape[dim] % ways:
        raise ShardingError(
            f"dimension {dim} ({name!r}, size {shape[dim]}) of an array of shape {shape} does "
            f"not split {ways} ways over mesh axes {axes}: change config.mesh.rules.{name} "
            "or the mesh, or resize the model")
    used.update(axes)
    spec.append(axes if len(axes) > 1 else (axes[0] if axes else None))
  return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh, rules):
  """NamedShardings for a pytree of (abstract) arrays whose nnx Variables name their axes.

  Optimizer moments mirror the parameters' Variables, so they shard like them; leaves
  without names (step counters, rng keys, router biases) are replicated.
  """
  logical = nnx.get_partition_spec(abstract_state)
  def leaf_sharding(names, leaf):
    names = tuple(names) if isinstance(names, PartitionSpec) else ()
    names = names + (None,) * (len(leaf.shape) - len(names))
    return NamedSharding(mesh, partition_spec(names, rules, mesh, leaf.shape))
  return jax.tree.map(leaf_sharding, logical, abstract_state)


def largest_dim_shardings(tree, mesh, axes) -> object:
  """NamedShardings for arrays that name no logical axes (the representation stages'
  modules), ZeRO-3 style: each array split over mesh `axes` along its largest dimension
  they divide, replicated where none does."""
  axes = tuple(a for a in axes if mesh.shape[a] > 1)
  ways = math.prod(mesh.shape[a] for a in axes)
  def leaf_sharding(leaf):
    spec = [None] * len(leaf.shape)
    divisible = [dim for dim in range(len(leaf.shape)) if leaf.shape[dim] % ways == 0]
    if axes and divisible:
      spec[max(divisible, key=lambda dim: leaf.shape[dim])] = axes if len(axes) > 1 else axes[0]
    return NamedSharding(mesh, PartitionSpec(*spec))
  return jax.tree.map(leaf_sharding, tree)


def spec_axes(entry) -> tuple:
  """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def batch_ways(mesh, rules) -> int:
  """How many ways the batch axes split a batch's rows (and their tokens) on `mesh`."""
  return math.prod(mesh.shape[a] for a in spec_axes(partition_spec(("batch",), rules, mesh)[0]))


def gathered_over_batch(shardings, rules):
  """Parameter shardings with the mesh axes that only split the batch (data, fsdp)
  removed: whole weights on every chip of a batch split, still divided over the expert and
  tensor axes. A sampler's loop reads them so, instead of gathering every layer's fsdp
  shards again on each of its steps."""
  drop = set(mesh_axes(rules, "batch")) - set(mesh_axes(rules, "expert"))
  def strip(where):
    spec = []
    for axes in where.spec:
      kept = tuple(a for a in spec_axes(axes) if a not in drop)
      spec.append(kept if len(kept) > 1 else (kept[0] if kept else None))
    return NamedSharding(where.mesh, PartitionSpec(*spec))
  return jax.tree.map(strip, shardings)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh, rules) -> NamedSharding:
  """Rows of the global batch split over the mesh axes of the `batch` rule."""
  return NamedSharding(mesh, partition_spec(("batch",), rules, mesh))


def check_batch_splits(batch_size: int, mesh, rules, key: str = "data.batch_size"):
  """Refuses a batch (config.`key`) whose rows the batch axes cannot split evenly."""
  ways = math.prod(mesh.shape[a] for a in mesh_axes(rules, "batch"))
  if batch_size % ways:
    raise ShardingError(f"config.{key}={batch_size} does not split {ways} ways over "
                        f"the batch mesh axes {mesh_axes(rules, 'batch')}: use a multiple of "
                        f"{ways}")


def process_rows(batch_size: int, mesh, rules) -> range:
  """The rows of the global batch that this process's devices hold: what it must load.

  Processes whose devices split the batch get disjoint ranges; processes that differ only
  along axes the batch is replicated over (e.g. `tensor`) get the same range.
  """
  index_map = batch_sharding(mesh, rules).addressable_devices_indices_map((batch_size,))
  spans = sorted({index[0].indices(batch_size)[:2] for index in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(hi - lo for lo, hi in spans) != stop - start:
    raise ShardingError(f"process {jax.process_index()} holds batch rows {spans}, not one "
                        "contiguous range: in config.mesh.rules.batch, list first the mesh "
                        "axes that span processes")
  return range(start, stop)


def global_batch(local_rows: dict, mesh, rules, batch_size: int) -> dict:
  """This process's rows (numpy, `process_rows`) -> global arrays of `batch_size` rows."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:])
          for k, v in local_rows.items()}


def host_to_global(tree, shardings):
  """Arrays that every process holds alike (a module built from the same seed, weights
  read from the same files) -> global arrays laid out by `shardings` (a tree like `tree`,
  or one sharding for every array); each process fills its own devices' shards."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  def put(x, where):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, where, lambda index: host[index])
  return jax.tree.map(put, tree, shardings)


_active = threading.local()


@contextlib.contextmanager
def activation_rules(mesh, rules):
  """Makes `constrain` pin activations to `mesh` while a step is traced inside this block."""
  previous = getattr(_active, "value", None)
  _active.value = (mesh, rules)
  try:
    yield
  finally:
    _active.value = previous


def active_rules():
  """(mesh, rules) while a step is traced under `activation_rules`, else None."""
  return getattr(_active, "value", None)


def constrain(x, logical: tuple):
  """Sharding constraint by logical names; a no-op outside `activation_rules` (one device,
  unit tests of single modules)."""
  active = active_rules()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, partition_spec(logical, rules, mesh, x.shape)))
