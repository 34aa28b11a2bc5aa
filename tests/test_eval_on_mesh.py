"""`mmpretrain eval` and `mmpretrain sample` on the config's mesh and on every host: the
scalars and images of a checkpoint do not depend on how many devices or processes compute
them (the reference is one device, or one process)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import config_file, tiny_config, xla_flags
from test_multihost import DEVICES_PER_PROCESS, PROCESSES, finish, free_port
from mmpretrain import sharding
from mmpretrain.generate import sample
from mmpretrain.train.evaluate import evaluate_checkpoint, restore_params
from mmpretrain.train.loop import train

MESH = {"data": 2, "fsdp": 4, "expert": 1, "tensor": 1}
CAPTIONS = ["a handwritten digit three", "seven"]
PER_CAPTION = 3                    # 6 images: 8 ways pad them to 8 rows


def checkpoint_config(data_dir: str):
  """A few trained steps; held-out batches of 16 rows (not the training batch's 8), split
  over 2 data shards so that two processes can each load one."""
  c = tiny_config(data_dir)
  c.data.shards = 2
  c.train.num_steps, c.checkpoint.every_steps = 4, 0
  c.sample.captions = []
  c.eval.batches, c.eval.batch_size = 2, 16
  return c


def mesh_config(data_dir: str):
  c = checkpoint_config(data_dir)
  c.mesh.update(MESH)
  return c


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("trained"))
  train(checkpoint_config(data_dir), workdir)
  return workdir


def one_device(config):
  return sharding.make_mesh(config.mesh, jax.devices()[:1])


def scalars(result: dict) -> dict:
  return {k: v for k, v in result.items() if isinstance(v, float)}


def test_eval_on_an_eight_device_mesh_gives_the_one_device_scalars(data_dir, trained):
  config = checkpoint_config(data_dir)
  alone = evaluate_checkpoint(config, trained, mesh=one_device(config))
  on_mesh = evaluate_checkpoint(mesh_config(data_dir), trained)
  assert (alone["num_devices"], on_mesh["num_devices"]) == (1, 8)
  assert on_mesh["mesh_shape"] == MESH and on_mesh["batch_size"] == 16
  assert {"text/text_loss", "text/text_bits_per_byte", "image_text/flow_loss",
          "mnist/caption_accuracy"} <= set(scalars(alone))
  assert scalars(on_mesh).keys() == scalars(alone).keys()
  for key, value in scalars(alone).items():
    assert on_mesh[key] == pytest.approx(value, rel=1e-5), key
  with open(on_mesh["path"], encoding="utf-8") as f:
    assert json.load(f) == {k: v for k, v in on_mesh.items() if k != "path"}


def test_eval_refuses_a_batch_the_mesh_cannot_split(data_dir, trained):
  config = mesh_config(data_dir)
  config.eval.batch_size = 4
  with pytest.raises(sharding.ShardingError, match=r"config.eval.batch_size=4 does not split "
                                                   "8 ways"):
    evaluate_checkpoint(config, trained)


def draw(config, workdir, tokenizer, mesh=None) -> sample.Drawn:
  _, run, params, _ = restore_params(config, workdir, mesh=mesh or
                                     sharding.make_mesh(config.mesh))
  return sample.draw_captions(run, tokenizer, params, CAPTIONS, PER_CAPTION, config.seed)


def test_sample_draws_the_same_images_on_one_and_eight_devices(data_dir, trained, tokenizer):
  config = checkpoint_config(data_dir)
  alone = draw(config, trained, tokenizer, one_device(config))
  on_mesh = draw(mesh_config(data_dir), trained, tokenizer)
  assert alone.images.shape[0] == 6 and on_mesh.images.shape[0] == 8   # padded to 8 ways
  assert sorted(shard.index[0].indices(8) for shard in on_mesh.images.addressable_shards) == [
      (row, row + 1, 1) for row in range(8)]                                # a row each
  # Reductions are ordered differently on 8 devices: a pixel may round the other way.
  np.testing.assert_allclose(on_mesh.gathered().astype(int), alone.gathered().astype(int),
                             atol=1)
  assert sorted(on_mesh.local()) == on_mesh.rows_of(0) == list(range(6))
  grid = sample.local_grid(on_mesh, PER_CAPTION)
  assert grid.size == (2 * 16 * PER_CAPTION, 2 * 16 * len(CAPTIONS))      # upscaled 2×


def run_on_two_processes(verb: str, config_path: str, workdir: str, *flags) -> list[str]:
  """`mmpretrain VERB` as PROCESSES processes of one job, as a pod's hosts would run it."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(DEVICES_PER_PROCESS))
  address = f"localhost:{free_port()}"
  return finish([subprocess.Popen(
      [sys.executable, "-m", "mmpretrain.cli", verb, f"--config={config_path}",
       f"--workdir={workdir}", f"--coordinator_address={address}",
       f"--num_processes={PROCESSES}", f"--process_id={i}", *flags],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(PROCESSES)])


@pytest.mark.slow      # two jobs of two processes each: a few minutes on 2 cores
def test_two_processes_eval_and_sample_like_one(data_dir, trained, tokenizer, tmp_path):
  config = mesh_config(data_dir)
  want = evaluate_checkpoint(config, trained)
  config_path = config_file(tmp_path, mesh_config, data_dir)
  outputs = run_on_two_processes("eval", config_path, trained)
  assert "wrote" in outputs[0] and "wrote" not in outputs[1]      # process 0 reports
  with open(want["path"], encoding="utf-8") as f:
    got = json.load(f)
  assert got["num_devices"] == 8 and got["mesh_shape"] == MESH
  assert scalars(got).keys() == scalars(want).keys()
  for key, value in scalars(want).items():
    assert got[key] == pytest.approx(value, rel=1e-5), key

  # Each process writes the caption images its devices drew; process 0 the record.
  reference = draw(config, trained, tokenizer).gathered()
  output = tmp_path / "samples"
  flags = [f"--caption={c}" for c in CAPTIONS]
  run_on_two_processes("sample", config_path, trained, *flags,
                       f"--images_per_caption={PER_CAPTION}", f"--output={output}")
  [record] = output.glob("sample_step*.json")
  grids = json.loads(record.read_text())["caption_grids"]
  assert list(grids.values()) == [[0, 1, 2, 3], [4, 5]]      # 4 rows a process, 2 padding
  for path, rows in grids.items():
    first = rows[0] // PER_CAPTION * PER_CAPTION
    cells = [reference[r] if r in rows else np.zeros_like(reference[0])
             for r in range(first, (rows[-1] // PER_CAPTION + 1) * PER_CAPTION)]
    want_grid = np.asarray(sample.image_grid(np.stack(cells), PER_CAPTION))
    got_grid = np.asarray(Image.open(path))
    np.testing.assert_allclose(got_grid.astype(int), want_grid.astype(int), atol=1)
