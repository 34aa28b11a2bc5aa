"""Configs: command-line overrides, and bad values failing early with the key named."""
import importlib.util
import os
import subprocess
import sys

import pytest

import base
import demo
from mmpretrain import config as config_lib
from mmpretrain.model.moe import expert_count
from mmpretrain.model.transformer import is_moe_layer
from mmpretrain.scaling.flops import active_matmul_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("get_config", [base.get_config, demo.get_config,
                                        lambda: base.get_config("runlocal")])
def test_shipped_configs_validate(get_config):
  config_lib.validate(get_config())


def config_module(relative: str):
  """The config file configs/<relative> as a module (get_config, and VARIANTS if any)."""
  path = os.path.join(ROOT, "configs", relative)
  spec = importlib.util.spec_from_file_location("_" + relative.replace("/", "_")[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("relative, arg", [
    ("stages/encoder_demo.py", None), ("stages/rae_demo.py", None), ("stages/vae_demo.py", None),
    ("ablations/visual_rep.py", "rae"), ("ablations/visual_rep.py", "vae"),
    ("ablations/visual_rep.py", "pixels")])
def test_stage_and_representation_configs_validate(relative, arg):
  config = config_lib.validate(config_module(relative).get_config(arg))
  if relative.startswith("ablations"):      # every arm: 64 latent tokens per 32×32 frame
    grid = {"rae": 8, "vae": 16, "pixels": 32}[arg]
    assert (grid // config.visual.patch_size) ** 2 == 64


def test_vocab_size_follows_the_tokenizer_setting():
  c = base.get_config()
  c.data.tokenizer.vocab_size = 1234
  assert c.model.vocab_size == 1234


@pytest.mark.parametrize("key, value, message", [
    ("model.num_kv_heads", 3, "config.model.num_kv_heads"),
    ("data.mixture", {"text": 1.0, "audio": 1.0}, "unknown stream"),
    ("data.mixture", {"text": 0.0}, "positive sum"),
    ("visual.patch_size", 5, "does not divide"),
    ("diffusion.prediction", "eps", "config.diffusion.prediction"),
    ("optimizer.schedule", "linear", "config.optimizer.schedule"),
    ("optimizer.grad_accum_steps", 3, "does not divide data.batch_size"),
    ("data.streams.image_text.caption_dropout", 1.5,
     "config.data.streams.image_text.caption_dropout"),
    ("data.streams.text.datasets", {"wikipedia": 1.0}, "unknown dataset"),
    ("data.mixture.action_video", 1.0, "holds 5 frames but a row holds data.max_frames=4"),
    ("checkpoint.best_metric", "text/text_loss", "needs held-out evaluations"),
    ("checkpoint.best_mode", "lowest", "config.checkpoint.best_mode"),
    ("data.shards", 3, "does not divide data.batch_size"),
    ("data.num_workers", -1, "config.data.num_workers"),

    ("model.remat", "some", "config.model.remat"),
])
def test_bad_values_name_the_key(key, value, message):
  c = base.get_config()
  *parents, name = key.split(".")
  node = c
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "mmpretrain.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_rejects_unknown_key():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_layerz=3")
  assert out.returncode != 0
  assert "num_layerz" in out.stderr


def test_cli_rejects_wrong_type():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_layers=deep")
  assert out.returncode != 0
  assert "num_layers" in out.stderr


def test_cli_reports_validation_errors_cleanly():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_kv_heads=3")
  assert out.returncode == 2
  assert "config.model.num_kv_heads" in out.stderr and "Traceback" not in out.stderr


def test_cli_without_command_prints_usage():
  out = run_cli()
  assert out.returncode == 2 and "usage: mmpretrain" in out.stderr


def test_command_line_overrides_reach_the_config(tmp_path, data_dir):
  # The override of data_dir and tokenizer.vocab_size decides where prepare looks and what
  # size it checks; the session tokenizer (512 ids) copied there is accepted as is.
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copy(os.path.join(data_dir, "tokenizer_512.model"), tmp_path / "tokenizer_512.model")
  out = run_cli("prepare", "--config=configs/demo.py", f"--config.data.data_dir={tmp_path}",
                "--config.data.tokenizer.vocab_size=512")
  assert out.returncode == 0, out.stderr
  assert f"tokenizer ready: {tmp_path}/tokenizer_512.model (512 ids)" in out.stdout


@pytest.mark.parametrize("key, value, message", [
    ("granularity", 5, "config.model.moe.granularity: granularity=5 does not divide"),
    ("router", "hash", "config.model.moe.router"),
    ("experts_per_token", 9, "config.model.moe.experts_per_token"),
    ("first_dense_layers", 99, "config.model.moe.first_dense_layers"),
])
def test_bad_moe_values_name_the_key(key, value, message):
  c = base.get_config()
  c.model.moe.num_experts = 8
  config_lib.validate(c)                           # a valid MoE config …
  c.model.moe[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):   # … broken by one key
    config_lib.validate(c)


ABLATIONS = ("ffn_type", "granularity", "total_experts", "shared_experts")


def ablation_variants(name):
  module = config_module(f"ablations/{name}.py")
  return module.get_config, module.VARIANTS


@pytest.mark.parametrize("name", ABLATIONS)
@pytest.mark.parametrize("suffix", ["", ",runlocal"])
def test_ablation_variants_validate_at_equal_active_ffn_flops(name, suffix):
  """Every variant of an ablation multiplies the same FFN parameters per token (routers
  aside, whose d × E is the cost of having experts at all)."""
  get_config, variants = ablation_variants(name)
  active = set()
  for variant in variants:
    c = config_lib.validate(get_config(variant + suffix))
    m = c.model
    moe_layers = sum(is_moe_layer(m, i) for i in range(m.num_layers))
    routers = moe_layers * m.d_model * expert_count(m.moe) if m.moe.num_experts else 0
    active.add(active_matmul_params(c) - routers)
  assert len(active) == 1, (name, active)


def test_ablation_arg_outside_its_variants_names_them():
  get_config, _ = ablation_variants("granularity")
  with pytest.raises(ValueError, match=r"use one of \['1', '2', '4', '8', '16'\]"):
    get_config("3")
