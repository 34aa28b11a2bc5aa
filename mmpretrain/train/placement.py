"""Where the step's arrays live: a data-parallel mesh over every device of every process.

Each process loads its own rows of the global batch (data/pipeline.py shards by process);
`global_batch` joins them into jax.Arrays split over the mesh's `data` axis with
`jax.make_array_from_process_local_data`. The train state is replicated. Sharding the
parameters themselves (fsdp, expert, tensor axes) is the mesh config's job.
"""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_parallel_mesh(global_batch_size: int) -> jax.sharding.Mesh:
  """A 1-axis mesh over all devices; the global batch must split evenly over them."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(f"config.data.batch_size={global_batch_size} does not split over "
                     f"{devices} devices: use a multiple of {devices}")
  return jax.make_mesh((devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_rows: dict, mesh) -> dict:
  """This process's rows (numpy, leading axis = rows) -> global arrays over `mesh`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_rows.items()}
