"""Every benchmark script runs (`--smoke`: tiny shapes, one step) and prints its one JSON
line with the figures docs/benchmarks.md quotes, so a refactor cannot silently break
`make bench`."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, config_file, tiny_config

SCRIPTS = {
    "train_step.py --config=configs/bench/mixed_ref.py": {
        "tokens_per_s", "model_flops_per_s", "matmul_peak_flops_per_s", "mfu", "step_s",
        "bf16_tokens_per_s", "bf16_mfu_vs_bf16_peak", "bf16_speedup"},
    "moe_overhead.py": {
        "dense_step_s", "moe_step_s", "moe_vs_dense", "moe_fine_vs_dense", "moe_drop_rate",
        "moe_fine_max_load_over_mean"},
    "attention.py": {"xla_temp_bytes", "chunked_temp_bytes", "chunked_over_xla_temp", "xla_ms",
                     "chunked_ms"},
    "attention_tpu.py": {"pairs", "block_ms", "kernel_ms", "dense_ms", "matmul_ms",
                         "kernel_vs_dense", "kernel_vs_matmul", "pallas_compile_s",
                         "pallas_temp_bytes", "pallas_matmul_ms"},
    "ffn_local.py": {"dense_ms", "moe_capacity_einsum_ms", "moe_capacity_gather_ms",
                     "moe_dropless_ms", "modality_select_ms", "modality_grouped_ms",
                     "moe_dropless_vs_dense", "modality_grouped_vs_dense"},
    "moe_layer.py": {"dense_ms", "moe_ms", "moe_vs_dense", "moe_fine_vs_dense"},
    "moe_tpu.py": {"capacity_einsum_ms", "capacity_ms", "capacity_expert_axis_ms",
                   "dropless_expert_axis_ms", "dense_ms", "routed_matmul_ms",
                   "capacity_einsum_vs_dense"},
    "prepare.py": {
        "text_records_per_s_1_worker", "text_records_per_s_2_workers", "text_scaling",
        "text_beam_over_loop", "images_records_per_s_1_worker", "images_scaling",
        "images_beam_over_loop", "fixed_s_1_worker", "fixed_s_2_workers"},
    "checkpoint.py": {
        "state_mb", "save_mb_per_s", "restore_mb_per_s", "save_vs_file_write",
        "async_block_fraction"},
    "encoder.py --config=configs/demo.py": {
        "demo_encoder_images_per_s", "dinov2_base_224_images_per_s", "rae_step_s",
        "pixels_step_s", "encoder_fraction_of_step", "rae_over_pixels_step"},
    "latent_cache.py --config=configs/demo.py": {
        "latent_cache_frames_per_s", "latent_cache_frames_per_s_per_device",
        "encode_frames_per_s", "stage_over_encode", "cache_bytes_per_frame"},
    "generation.py --config=configs/demo.py": {
        "euler_images_per_s", "heun_images_per_s", "overhead_over_n_forwards",
        "cached_tokens_per_s", "uncached_tokens_per_s", "cache_speedup"},
}


def run_smoke(command: str, tmp_path) -> dict:
  script, *args = command.split()
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args,
                        "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       check=False, env=dict(os.environ, TMPDIR=str(tmp_path)))
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 1, out.stdout
  return json.loads(lines[0])


def test_every_benchmark_script_has_a_smoke_run():
  scripts = {c.split()[0] for c in SCRIPTS} | {"data_pipeline.py"}
  assert scripts == {f for f in os.listdir(os.path.join(ROOT, "benchmarks"))
                     if f.endswith(".py") and f != "smoke.py"}


# The smokes that compile several models run with make test-slow, and so do the TPU
# compiles of moe_tpu.py and attention_tpu.py (skipped without libtpu: make install-tpu).
SLOW_SMOKES = ("moe_overhead.py", "encoder.py --config=configs/demo.py",
               "latent_cache.py --config=configs/demo.py", "generation.py --config=configs/demo.py",
               "ffn_local.py", "checkpoint.py")
NEEDS_LIBTPU = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="no libtpu: make install-tpu")


def marks(command: str) -> list:
  if command in ("moe_tpu.py", "attention_tpu.py"):
    return [pytest.mark.slow, NEEDS_LIBTPU]
  return [pytest.mark.slow] if command in SLOW_SMOKES else []


@pytest.mark.parametrize("command", [pytest.param(c, marks=marks(c)) for c in sorted(SCRIPTS)])
def test_benchmark_prints_its_figures(command, tmp_path):
  figures = run_smoke(command, tmp_path)
  missing = SCRIPTS[command] - set(figures)
  assert not missing, f"{command}: no {sorted(missing)} in {sorted(figures)}"
  for key in SCRIPTS[command]:              # rates and sizes; a drop rate may be 0
    assert math.isfinite(figures[key]) and figures[key] >= 0, (key, figures[key])


def test_data_pipeline_benchmark_prints_its_figures(tmp_path, data_dir):
  path = config_file(tmp_path, tiny_config, data_dir)
  figures = run_smoke(f"data_pipeline.py --config={path}", tmp_path)
  assert {"pipeline_tokens_per_s_0_workers", "train_tokens_per_s", "headroom"} <= set(figures)
  assert figures["headroom"] > 0
