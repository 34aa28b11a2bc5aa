"""The SLURM job template: shellcheck-clean, and near its time limit (USR1) it requeues
the job and lets the step save and finish, with fake srun/scontrol on the PATH."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "slurm", "run.sbatch")


def fake(directory, name: str, body: str) -> None:
  path = os.path.join(directory, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write("#!/usr/bin/env bash\n" + body + "\n")
  os.chmod(path, 0o755)


def test_the_job_script_passes_shellcheck():
  shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                          "shellcheck")
  result = subprocess.run([shellcheck, "-x", SCRIPT], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout


# What the fake scontrol does after TERMing the step: return at once, or only once the step
# has ended, so that the step ends inside the job's trap (a loaded node's timing).
AFTER_TERM = {"returns_at_once": "",
              "returns_after_the_step": 'while kill -0 "$p" 2>/dev/null; do sleep 0.02; done; '
                                        "sleep 0.2"}


@pytest.mark.parametrize("after_term", AFTER_TERM)
def test_near_the_time_limit_the_job_requeues_and_the_step_saves(tmp_path, after_term):
  log, pid_file = tmp_path / "log", tmp_path / "step.pid"
  fake(tmp_path, "srun", 'shift; exec "$@"')                  # drop --kill-on-bad-exit
  fake(tmp_path, "scontrol", f'echo "scontrol $*" >> {log}; p="$(cat {pid_file})"; '
       f'kill -TERM "$p"; {AFTER_TERM[after_term]}')
  fake(tmp_path, "mmpretrain", f'echo $$ > {pid_file}; echo "step $*" >> {log}\n'
       f'trap \'echo "saved" >> {log}; exit 0\' TERM\nwhile true; do sleep 0.05; done')
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="42",
             MMPRETRAIN=str(tmp_path / "mmpretrain"), SLURM_SUBMIT_DIR=str(tmp_path))
  job = subprocess.Popen(["bash", SCRIPT, "train", "--workdir=/shared/run"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 30
  while not pid_file.exists() and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGUSR1)
  out, _ = job.communicate(timeout=30)
  assert job.returncode == 0, out
  assert log.read_text().splitlines() == ["step train --workdir=/shared/run",
                                          "scontrol requeue 42", "saved"]
  assert "requeueing job 42" in out


def test_the_job_exits_with_the_steps_status(tmp_path):
  fake(tmp_path, "srun", 'shift; exec "$@"')
  fake(tmp_path, "mmpretrain", "exit 3")
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="42",
             MMPRETRAIN=str(tmp_path / "mmpretrain"), SLURM_SUBMIT_DIR=str(tmp_path))
  job = subprocess.run(["bash", SCRIPT, "train"], env=env, capture_output=True, check=False)
  assert job.returncode == 3
