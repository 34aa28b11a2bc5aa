"""Shared fixtures. 8 virtual CPU devices so mesh code runs on real (virtual) meshes."""
import os
import sys
import tempfile

# The tests' programs are tiny, so their time goes to compiling them, not to running them:
# LLVM's optimisation passes are turned off for the session (and the runs it starts).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests, their pytest-xdist workers and the runs they start compile the same small
# programs: one compilation cache for the whole session (set before the workers start, so
# they and every subprocess inherit it) compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmpretrain-tests-jax-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pytest  # pylint: disable=wrong-import-position


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a process a test starts with `devices` CPU devices, compiling as this
  session does: a result compared with this process's must come from the same code."""
  kept = [flag for flag in os.environ["XLA_FLAGS"].split()
          if not flag.startswith("--xla_force_host_platform_device_count")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *kept])


def _import_torchvision_without_its_kernels():
  """torchvision 0.28 from the registry is the CUDA wheel: beside the CPU torch its C++ ops
  are missing and its import fails registering fake kernels for them. The references the
  tests use (pytorch-fid's Inception, transformers' image models, which import torchvision
  when it is installed) run plain torch ops only, so the registration is skipped once,
  here, before any test imports torchvision."""
  from unittest import mock  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  with mock.patch.object(torch.library, "register_fake", lambda *a, **k: (lambda fn: fn)):
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401


_import_torchvision_without_its_kernels()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = "tokenizer_512.model"        # the session's tokenizer, in data_dir
sys.path.insert(0, os.path.join(ROOT, "configs"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running; run with `make test-slow`")


def tiny_config(data_dir: str):
  """The runlocal base config shrunk further so a test step takes milliseconds."""
  import base  # pylint: disable=import-outside-toplevel
  c = base.get_config("runlocal")
  c.data.data_dir = data_dir
  c.data.seq_len = 128
  c.data.batch_size = 8                  # one row per virtual device
  c.data.max_frames = 2
  c.data.image_size = 16
  c.data.mixture.text, c.data.mixture.image_text = 0.25, 0.75
  c.data.tokenizer.vocab_size = 512
  # Every test config reads the session's one tokenizer, whatever datasets it mixes (an
  # explicit path wins over the name `prepare` keys by the corpus).
  c.data.tokenizer.path = os.path.join(data_dir, TOKENIZER)
  c.model.d_model, c.model.mlp_dim, c.model.head_dim = 64, 128, 32
  c.optimizer.warmup_steps = 2
  c.optimizer.learning_rate = 3e-3
  c.train.num_steps = 30
  c.train.log_every = 5
  c.diffusion.sample_steps = 3
  c.eval.caption_images, c.eval.caption_tokens = 8, 4
  c.sample.captions = ["a handwritten digit three", "a handwritten digit seven"]
  c.sample.images_per_caption = 2
  return c


def config_file(tmp_path, make_config, data_dir: str) -> str:
  """A config file whose get_config() returns make_config(data_dir), where make_config is a
  module-level function of a test module: for `mmpretrain …` in a subprocess."""
  path = tmp_path / f"{make_config.__name__}.py"
  path.write_text(
      "import sys\n"
      f"sys.path[:0] = [{os.path.join(ROOT, 'tests')!r}, {os.path.join(ROOT, 'configs')!r}]\n"
      f"from {make_config.__module__} import {make_config.__name__}\n"
      f"def get_config():\n  return {make_config.__name__}({data_dir!r})\n")
  return str(path)


def assert_resumes_identically(config, tokenizer, state, expected: list[dict]) -> None:
  """A new batch iterator restored to `state` yields exactly the batches `expected`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmpretrain.data import pipeline  # pylint: disable=import-outside-toplevel
  from mmpretrain.tokenizers.visual import row_spec  # pylint: disable=import-outside-toplevel
  resumed = pipeline.make_batches(config, tokenizer, row_spec(config))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def has_emoji_font() -> bool:
  from mmpretrain.data import sources  # pylint: disable=import-outside-toplevel
  return os.path.exists(sources.EMOJI_FONT)


def all_streams_config(data_dir: str):
  """tiny_config reading all four streams and every built-in dataset."""
  c = tiny_config(data_dir)
  c.data.mixture = {"text": 0.1, "image_text": 0.3, "video": 0.3, "action_video": 0.3}
  c.data.streams.image_text.datasets.emoji_captions = 1.0 if has_emoji_font() else 0.0
  c.data.seq_len, c.data.max_frames, c.data.image_channels = 512, 5, 3
  return c


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, worker_id):
  """Every built-in dataset and a small tokenizer, made by `prepare` as a user would.
  Tests only read it, so the pytest-xdist workers share one: the first to ask makes it
  while the others wait on a lock."""
  # pylint: disable=import-outside-toplevel
  import shutil
  import filelock
  from mmpretrain.data.pipeline import tokenizer_path
  from mmpretrain.data.prepare import datasets_in_use, prepare
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent                   # the session's directory, above each worker's
  path, made = root / "data", root / "data.made"
  with filelock.FileLock(str(root / "data.lock")):
    if not made.exists():
      config = tiny_config(str(path))
      config.data.tokenizer.path = ""    # trained under its corpus's name, as for a user
      prepare(config, datasets_in_use(all_streams_config(str(path))))
      shutil.copy(tokenizer_path(config), path / TOKENIZER)
      made.touch()
  return str(path)


@pytest.fixture
def config(data_dir):
  return tiny_config(data_dir)


@pytest.fixture(scope="session")
def tokenizer(data_dir):
  from mmpretrain.data.pipeline import load_tokenizer  # pylint: disable=import-outside-toplevel
  return load_tokenizer(tiny_config(data_dir))


@pytest.fixture(scope="session")
def plans():
  """`plans(name, scale)`: the study's plan of an experiment, built once a session (each
  counts its runs' parameters by eval_shape)."""
  # pylint: disable=import-outside-toplevel
  from mmpretrain.study import registry
  from mmpretrain.study.plan import plan
  cache = {}
  def get(name, scale="paper"):
    if (name, scale) not in cache:
      cache[name, scale] = plan(registry.experiment(name), scale)
    return cache[name, scale]
  return get
