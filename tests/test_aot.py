"""Compiling the train step for TPU topologies on this CPU machine (libtpu, no TPU):
topology names, `auto` choices made for the target, the layer-extrapolated cost model
against a fully unrolled compile, and `mmpretrain compile`'s report and refusal."""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import base

from mmpretrain.config import load_config, validate
from mmpretrain.encoders import store
from mmpretrain.encoders.vit import VisionTransformer
from mmpretrain.model.masks import attention_mask
from mmpretrain.scaling.sweep import with_overrides
from mmpretrain.stages.encoder import image_tower_config
from mmpretrain.stages.latent_cache import encode_step
from mmpretrain.tokenizers import rae as rae_lib
from mmpretrain.tokenizers.visual import make_representation, row_spec
from mmpretrain.train import aot
from mmpretrain.train.evaluate import with_eval_batch

from conftest import ROOT, config_file
from test_rae import stage_config


NO_LIBTPU = importlib.util.find_spec("libtpu") is None


def tpu_compile(test):
  """Compiles for TPU take a minute or two on 2 cores: `make test-slow` (CI installs
  libtpu); skipped where libtpu is missing."""
  return pytest.mark.slow(pytest.mark.skipif(NO_LIBTPU, reason="no libtpu: make install-tpu")(
      test))


@pytest.mark.parametrize("name, want", [
    ("v5p-8", ("v5p", "2x2x1")), ("v5p-128", ("v5p", "4x4x4")), ("v4-32", ("v4", "2x2x4")),
    ("v5e-16", ("v5e", "4x4")), ("v6e-256", ("v6e", "16x16")), ("v5p:4x4x8", ("v5p", "4x4x8"))])
def test_topology_names(name, want):
  assert aot.parse_topology(name) == want


@pytest.mark.parametrize("name", ["v5p-7", "v7x-8", "tpu", "v5e-3"])
def test_a_topology_that_does_not_exist_is_refused_with_the_choices(name):
  with pytest.raises(ValueError, match="--topology"):
    aot.parse_topology(name)


@tpu_compile
def test_chunked_attention_compiles_for_tpu_at_8k_tokens_in_a_tenth_of_the_dense_memory():
  # One attention layer's forward and backward, one 8192-token row per v5p chip (~12 s).
  out = subprocess.run([sys.executable, f"{ROOT}/benchmarks/attention.py",
                        "--topology=v5p:2x2x1", "--length=8192"], capture_output=True,
                       text=True, timeout=600, check=True)
  figures = json.loads(out.stdout.strip().splitlines()[-1])
  assert figures["xla_temp_bytes"] > 2 * 8 * 8192 ** 2     # the bf16 [heads, L, L] scores
  assert figures["chunked_over_xla_temp"] <= 0.1, figures


@pytest.mark.parametrize("chunk", [64, 100, 512])
def test_chunk_pairs_are_the_blocks_the_mask_spans(chunk):
  """Brute force over the mask: a query chunk's loop runs from the first key chunk any of
  its queries sees to the last."""
  config = small_config()
  config.data.seq_len, config.data.max_frames = 1024, 4
  spec = row_spec(validate(config), latent_grid=(8, 8, 4))
  row = aot.typical_row(config, spec)
  allowed = np.asarray(attention_mask(row["segment_ids"], row["block_ids"]))[0, 0]
  want = 0
  for q in range(0, spec.seq_len, chunk):
    keys = np.flatnonzero(allowed[q:q + chunk].any(0))
    want += keys.max() // chunk - keys.min() // chunk + 1
  assert aot.chunk_pairs(row, chunk) == want
  chunks = -(-spec.seq_len // chunk)
  assert want < chunks ** 2 or chunks == 1       # blocks no query sees are skipped


def small_config(**model):
  c = validate(load_config(f"{ROOT}/configs/bench/dense_ref.py"))
  c.data.seq_len, c.data.batch_size = 256, 8
  c.mesh.data, c.mesh.fsdp = 1, 4
  c.model.d_model, c.model.mlp_dim, c.model.num_layers, c.model.dtype = 256, 768, 4, "bfloat16"
  c.model.num_heads = c.model.num_kv_heads = 4
  c.data.tokenizer.vocab_size = 2048
  for k, v in model.items():
    c.model[k] = v
  return validate(c)


def test_auto_choices_follow_the_target_platform():
  c = small_config(attention_impl="auto")
  c.model.moe.dispatch = "auto"
  tpu = aot.for_platform(c, "tpu")
  assert (tpu.model.attention_impl, tpu.model.moe.dispatch, tpu.model.modality_ffn_impl) == (
      "chunked", "capacity", "grouped")
  gpu = aot.for_platform(c, "gpu")
  assert (gpu.model.attention_impl, gpu.model.moe.dispatch, gpu.model.modality_ffn_impl) == (
      "chunked", "capacity", "select")
  cpu = aot.for_platform(c, "cpu")
  assert (cpu.model.attention_impl, cpu.model.moe.dispatch, cpu.model.modality_ffn_impl) == (
      "einsum", "capacity", "select")


@tpu_compile
def test_a_dense_then_moe_stack_is_costed_by_kind_like_its_fully_unrolled_compile():
  # 1 dense + 3 MoE layers (capacity dispatch): outside + 3 MoE + 1 dense from three
  # small compiles, against compiling all four layers unrolled (with the dense attention
  # the unrolled compiles hold: the chunked kernel's cost is swapped in apart).
  # (At d 256 and 256 tokens a row the whole step is 0.6 ms, and XLA's fusion choices
  # alone move it by 5%. Here the estimate is 3.3% under the unrolled compile with the
  # row-gather dispatch's sort-based slot claims, 0.7% with one-hot claims: the sorts of
  # four layers compiled together cost a little more than four compiled apart.)
  config = small_config(scan_layers=True, d_model=512, mlp_dim=1536)
  config.data.seq_len = 512
  config.model.moe.update(num_experts=4, first_dense_layers=1, dispatch="capacity")
  config = aot.for_platform(validate(config), "tpu")
  config.model.attention_impl = "xla"
  _, devices = aot.abstract_devices("v5p-8")
  estimate = aot.estimated_cost(config, devices)
  unrolled = aot.step_cost(aot.unrolled(config, config.model.num_layers), devices)
  assert estimate["optimal_seconds"] == pytest.approx(unrolled["optimal_seconds"], rel=0.04)
  assert estimate["flops"] == pytest.approx(unrolled["flops"], rel=0.03)


@tpu_compile
def test_the_layer_extrapolated_cost_equals_the_fully_unrolled_compile():
  config = aot.for_platform(small_config(scan_layers=True), "tpu")
  config.model.attention_impl = "xla"         # as the unrolled compiles hold it
  _, devices = aot.abstract_devices("v5p-8")
  report = aot.report(config, "v5p-8")
  unrolled = aot.step_cost(aot.unrolled(config, config.model.num_layers), devices)
  assert report["optimal_seconds"] == pytest.approx(unrolled["optimal_seconds"], rel=0.02)
  assert report["xla_flops"] == pytest.approx(unrolled["flops"], rel=0.02)
  # XLA counts the scanned body once: the scanned step alone would under-report.
  scanned, _ = aot.compile_step(config, devices)
  assert aot._cost(scanned)["flops"] < 0.6 * unrolled["flops"]   # pylint: disable=protected-access
  # Model FLOPs (6·N·tokens + attention) over 4 chips: what each chip's program runs.
  assert report["xla_flops"] * report["chips"] == pytest.approx(report["model_flops"], rel=0.1)
  assert report["fits"] and 0 < report["cost_model_mfu"] < 1
  assert report["per_device_bytes"] == (report["argument_bytes"] + report["output_bytes"]
                                        + report["temp_bytes"] - report["alias_bytes"])
  # The sampler's denoising step, extrapolated the same way.
  sampler = aot.denoising_step_cost(aot.unrolled(config, config.model.num_layers), devices)
  # (5%: this tiny model's step, its weights whole on each chip, is tens of µs, where
  # the compiler's per-layer scheduling shows)
  assert report["sampler_step_seconds"] == pytest.approx(sampler["optimal_seconds"], rel=0.05)
  assert report["sampler_fits"] and report["sampler_rows"] == config.data.batch_size


@tpu_compile
@pytest.mark.parametrize("keep", [True, False])
def test_the_chunked_kernels_cost_swaps_in_like_the_kernel_compiled_in_the_layers(keep):
  # With one chunk a row each of the kernel's loops runs once, so a step that holds it
  # unrolled is costed right. The estimate holds dense attention in the layers and swaps
  # in the kernel's cost apart, both compiled as a layer runs them (under remat, with its
  # residuals kept or its forward run again): the two must agree.
  config = aot.for_platform(small_config(scan_layers=True, remat="dots_no_batch",
                                         remat_keep_attention=keep), "tpu")
  config.model.attention_chunk = config.data.seq_len
  # Two layers: the 1- and 2-layer compiles then give the dense stack exactly, so this
  # checks the swap alone (the layers' extrapolation is the test above; at this tiny size
  # a layer's cost drifts by a tenth from one layer to the next with either kernel).
  config.model.num_layers = 2
  _, devices = aot.abstract_devices("v5p-8")
  estimate = aot.estimated_cost(config, devices)
  whole = config.copy_and_resolve_references()
  whole.model.scan_layers = False
  unrolled = aot.step_cost(whole, devices)
  assert estimate["optimal_seconds"] == pytest.approx(unrolled["optimal_seconds"], rel=0.03)
  assert estimate["flops"] == pytest.approx(unrolled["flops"], rel=0.02)


@tpu_compile
def test_the_cost_compiles_count_every_matmul_of_an_fsdp_layer():
  # At the paper's size XLA runs the FSDP weight gathers' matmuls as windowed loops, whose
  # body the cost analysis counts once; the compiles that price the step do without them.
  # One layer of the 1B model on a v5p-64: its matmuls' FLOPs are counted whole.
  config = aot.unrolled(aot.for_platform(load_config(f"{ROOT}/configs/paper/dense_1b.py"),
                                         "tpu"), 1)
  _, devices = aot.abstract_devices("v5p-64")
  real, _ = aot.compile_step(config, devices)
  assert "windowed_dot_general" in real.as_text()
  costed, _ = aot.compile_step(config, devices, for_cost=True)
  assert "windowed_dot_general" not in costed.as_text()
  m, chips = config.model, len(devices)
  tokens = config.data.batch_size * config.data.seq_len // chips
  # The layer's and the LM head's weight matmuls, forward and backward, at least.
  matmuls = 6 * tokens * m.d_model * (4 * m.d_model + 3 * m.mlp_dim + m.vocab_size)
  assert aot._cost(real)["flops"] < matmuls < aot._cost(costed)["flops"]  # pylint: disable=protected-access


def run_compile(*args):
  return subprocess.run([sys.executable, "-m", "mmpretrain.cli", "compile", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, check=False)


@tpu_compile
def test_compile_prints_its_report_and_refuses_a_step_that_does_not_fit():
  out = run_compile("--config=configs/bench/dense_ref.py", "--topology=v5e-4",
                    "--config.mesh.data=1", "--config.mesh.fsdp=4",
                    "--config.model.num_layers=2")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["tpu"] == "v5e:2x2" and report["fits"] and report["hbm_bytes"] == 16 * 2**30
  # 64 rows of 16k tokens with every activation saved: far beyond a v5e's 16 GiB.
  out = run_compile("--config=configs/bench/dense_ref.py", "--topology=v5e-4",
                    "--config.mesh.data=1", "--config.mesh.fsdp=4",
                    "--config.model.num_layers=2", "--config.data.batch_size=64",
                    "--config.data.seq_len=16384")
  assert out.returncode == 3, out.stderr[-2000:]
  assert "GiB per chip" in out.stderr and "--config.model.remat=full" in out.stderr


@tpu_compile
def test_the_held_out_loss_step_is_costed_like_its_fully_unrolled_compile():
  # `--program=eval`: one forward pass over eval.batch_size rows (16; training's are 8),
  # its layers extrapolated from 1- and 2-layer compiles like the train step's, which hold
  # the dense attention.
  config = small_config(scan_layers=True)
  config.eval.batch_size = 16
  report = aot.eval_report(config, "v5p-8")
  assert report["program"] == "eval" and report["rows"] == 16 and report["fits"]
  assert report["tokens_per_step"] == 16 * config.data.seq_len
  whole = aot.unrolled(aot.for_platform(with_eval_batch(config), "tpu"),
                       config.model.num_layers)
  _, devices = aot.abstract_devices("v5p-8")
  unrolled = aot.eval_step_cost(whole, devices)
  assert report["optimal_seconds"] == pytest.approx(unrolled["optimal_seconds"], rel=0.02)
  assert report["xla_flops"] == pytest.approx(unrolled["flops"], rel=0.02)
  # Forward model FLOPs (2·N·tokens + a third of training's attention) over 4 chips.
  assert report["xla_flops"] * report["chips"] == pytest.approx(report["model_flops"], rel=0.1)
  assert 0 < report["cost_model_mfu"] < 1


@tpu_compile
def test_compile_prices_the_sampler_for_the_eval_batch_and_refuses_what_does_not_fit():
  small = ["--config=configs/bench/dense_ref.py", "--topology=v5e-4", "--config.mesh.data=1",
           "--config.mesh.fsdp=4", "--config.model.num_layers=2"]
  out = run_compile(*small, "--program=sample", "--config.eval.batch_size=16")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["program"] == "sample" and report["rows"] == 16 and report["fits"]
  # Extrapolated from 1- and 2-layer compiles: the 2-layer model's step compiled whole,
  # for the 16 rows of the eval batch.
  config = with_overrides(validate(load_config(f"{ROOT}/configs/bench/dense_ref.py")), {
      "mesh.data": 1, "mesh.fsdp": 4, "model.num_layers": 2, "data.batch_size": 16})
  _, devices = aot.abstract_devices("v5e-4")
  whole = aot.denoising_step_cost(aot.unrolled(aot.for_platform(config, "tpu"), 2), devices)
  assert report["step_seconds"] == pytest.approx(whole["optimal_seconds"], rel=0.03)
  # 64 rows of 16k tokens: their float32 logits alone are 33 GB a chip, beyond 16 GiB.
  out = run_compile(*small, "--program=eval", "--config.eval.batch_size=64",
                    "--config.data.seq_len=16384")
  assert out.returncode == 3, out.stderr[-2000:]
  assert "held-out loss step does not fit" in out.stderr
  assert "--config.eval.batch_size" in out.stderr


def latent_grid(config):
  """The representation's latent grid, built once per representation (a So400m RAE is
  seconds to build, even abstract)."""
  v, data = config.visual, config.data
  return _latent_grid(v.representation, v.checkpoint, data.image_size, data.image_channels)


@functools.cache
def _latent_grid(representation, checkpoint, image_size, channels):
  c = base.get_config()
  c.visual.representation, c.visual.checkpoint = representation, checkpoint
  c.data.image_size, c.data.image_channels = image_size, channels
  return make_representation(c).latent_grid


def test_a_failed_compile_is_one_row_of_the_paper_table():
  sys.path.insert(0, f"{ROOT}/scripts")
  from compile_paper import row  # pylint: disable=import-outside-toplevel
  error = "mmpretrain compile: error: Cannot assign\n\n  _.x = nnx.data(...)"
  line = row({"config": "configs/paper/x.py", "topology": "v5p-8", "error": error})
  assert "\n" not in line and line.endswith("| | | | | | |")
  assert "Cannot assign _.x = nnx.data(...)" in line


def test_every_paper_config_is_sized_for_the_topology_it_names():
  sys.path.insert(0, f"{ROOT}/scripts")
  from compile_paper import paper_configs  # pylint: disable=import-outside-toplevel
  configs = paper_configs()
  assert len(configs) >= 10
  tokens_per_image = set()
  for path, topology, overrides in configs:
    config = with_overrides(validate(load_config(f"{ROOT}/{path}")), overrides)
    generation, shape = aot.parse_topology(topology)
    chips = 1
    for n in shape.split("x"):
      chips *= int(n)
    mesh = config.mesh
    assert mesh.data * mesh.fsdp * mesh.expert * mesh.tensor == chips, path
    assert config.data.batch_size % chips == 0, path
    assert generation in aot.CHIPS
    tokens_per_image.add(row_spec(config, latent_grid(config)).tokens_per_frame)
    if "scaling" in config:           # the grid is compiled at its widest model
      assert overrides["model.d_model"] == max(config.scaling.widths)
  # The representation arms (RAE, VAE, pixels) put the same number of tokens in an image.
  assert tokens_per_image == {256}


@tpu_compile
def test_compile_prices_the_latent_cache_encode_step_per_chip(tmp_path):
  # A small random RAE (16² frames, one layer, width 32) through the CLI on a v5p-8 (~10 s).
  # pylint: disable-next=import-outside-toplevel
  from test_latent_cache import pod_config, save_random_rae
  config = pod_config(str(tmp_path))
  save_random_rae(config)
  out = run_compile(f"--config={config_file(tmp_path, pod_config, str(tmp_path))}",
                    "--topology=v5p-8", "--program=latent_cache")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["program"] == "latent_cache" and report["chips"] == 4 and report["fits"]
  assert report["latent_grid"] == [4, 4, 32]
  per_chip = report["frames_per_chip"]
  assert report["images_per_s_per_chip"] == pytest.approx(per_chip / report["optimal_seconds"])
  # Each chip runs the encoder on its own frames: the FLOPs of one CPU device's compile.
  representation = make_representation(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("frames",))
  frames = jax.ShapeDtypeStruct((per_chip, 16, 16, 1), np.uint8)
  cpu = aot._cost(encode_step(representation, mesh).lower(  # pylint: disable=protected-access
      representation.abstract_params(), frames).compile())
  assert report["xla_flops"] == pytest.approx(cpu["flops"], rel=0.05)


@tpu_compile
def test_the_so400m_encode_step_costs_its_matmuls_on_every_token():
  # The paper's SigLIP 2 So400m/14 at 224 px: its 27 layers are unrolled, so the analysis
  # counts them all: 2 FLOPs a parameter a token (256 tokens), attention adding a few
  # percent and the unused pooling head's parameters about as many (~40 s: building the
  # abstract So400m, then the compile).
  config = validate(load_config(f"{ROOT}/configs/paper/dense_1b.py"))
  report = aot.latent_cache_report(config, "v5p-8")
  encoder = make_representation(config).abstract_params()["encoder"]
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(encoder))
  per_image = report["xla_flops"] / report["frames_per_chip"]
  assert 0.95 < per_image / (2 * params * 256) < 1.1
  assert report["latent_grid"] == [16, 16, 1152] and report["fits"]


def rae_stage_config(root: str):
  """test_rae's RAE stage on the random encoder in `root`/encoder, split 2 × 2 over data and
  fsdp: module level, for `mmpretrain compile` in a subprocess (conftest.config_file)."""
  c = stage_config(root, 10)
  c.rae.encoder = os.path.join(root, "encoder")
  c.mesh.data, c.mesh.fsdp = 2, 2
  return c


@tpu_compile
def test_compile_prices_the_rae_decoders_train_step_per_chip(tmp_path):
  # test_rae's tiny RAE (16² frames, one-layer encoder and decoder of width 32, the GAN
  # critic) through the CLI on a v5p-8's 4 chips (~45 s).
  config = rae_stage_config(str(tmp_path))
  store.save_encoder(config.rae.encoder,
                     VisionTransformer(image_tower_config(config), rngs=nnx.Rngs(0)))
  out = run_compile(f"--config={config_file(tmp_path, rae_stage_config, str(tmp_path))}",
                    "--topology=v5p-8", "--program=train_rae")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["program"] == "train_rae" and report["chips"] == 4 and report["fits"]
  assert report["images_per_s_per_chip"] == pytest.approx(
      report["images_per_step"] / 4 / report["optimal_seconds"])
  # Each chip runs a quarter of the images: about one CPU device's step on a quarter of
  # the batch (the optimizer's update, split over fsdp alone, counts twice as much).
  config.data.batch_size //= 4
  config.mesh.data = config.mesh.fsdp = 1
  cpu = aot._cost(aot.lower_train_rae_step(  # pylint: disable=protected-access
      config, jax.devices()[:1]).compile())
  assert report["xla_flops"] == pytest.approx(cpu["flops"], rel=0.1)


def test_the_paper_rae_stage_trains_the_rae_the_paper_runs_read():
  spec = importlib.util.spec_from_file_location(
      "rae_so400m_224", f"{ROOT}/configs/paper/rae_so400m_224.py")
  stage = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(stage)
  assert stage.PROGRAM == "train_rae"
  config = validate(stage.get_config())
  with open(f"{ROOT}/configs/paper/rae_so400m_224/rae.json", encoding="utf-8") as f:
    read = json.load(f)
  encoder = rae_lib.encoder_config(config.rae.encoder)
  assert rae_lib.decoder_config(config, encoder) == rae_lib.DecoderConfig(**read["decoder"])
  assert encoder.width == 1152 and encoder.grid == 16
  chips = int(np.prod([int(n) for n in aot.parse_topology(stage.TOPOLOGY)[1].split("x")]))
  mesh = config.mesh
  assert mesh.data * mesh.fsdp * mesh.expert * mesh.tensor == chips
  assert config.data.batch_size % chips == 0
