"""Run files through mmpretrain.storage: local writes are atomic, the metrics log appends
locally and is published in parts where an object store cannot append, and URLs are never
mangled into local paths."""
import os

from mmpretrain import storage


def test_local_writes_leave_no_temporary_behind(tmp_path):
  path = str(tmp_path / "summary.json")
  storage.write_json(path, {"step": 3})
  assert storage.read_json(path) == {"step": 3} and os.listdir(tmp_path) == ["summary.json"]


def test_urls_stay_urls_and_local_paths_become_absolute():
  assert storage.absolute("gs://bucket/runs/a") == "gs://bucket/runs/a"
  assert storage.absolute("runs/a") == os.path.abspath("runs/a")
  assert storage.join("gs://bucket/runs", "a", "checkpoints") == "gs://bucket/runs/a/checkpoints"
  assert not storage.is_local("gs://bucket") and storage.is_local("/tmp/x")


def test_metrics_log_appends_and_continues_after_a_restart(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  log = storage.JsonLines(path)
  log.write({"step": 0})
  log.close()
  resumed = storage.JsonLines(path)
  resumed.write({"step": 1})
  resumed.close()
  assert storage.read_text(path).splitlines() == ['{"step": 0}', '{"step": 1}']


def test_on_an_object_store_the_log_is_published_in_parts_never_rewritten(tmp_path,
                                                                         monkeypatch):
  """No append on gs://: each part is written once (the local directory stands in)."""
  monkeypatch.setattr(storage, "is_local", lambda path: False)
  written = []
  write_text = storage.write_text
  monkeypatch.setattr(storage, "write_text", lambda p, t: (written.append(p), write_text(p, t)))
  path = str(tmp_path / "metrics.jsonl")
  log = storage.JsonLines(path, part_lines=2)
  assert log.file is None
  for step in range(5):
    log.write({"step": step})
  log.close()                                          # the fifth line: a last, short part
  assert [os.path.basename(p) for p in written] == [
      "metrics-00000.jsonl", "metrics-00001.jsonl", "metrics-00002.jsonl"]
  resumed = storage.JsonLines(path, part_lines=2)      # after a restart: parts continue
  resumed.write({"step": 5})
  resumed.close()
  assert os.path.basename(written[-1]) == "metrics-00003.jsonl"
  assert [r["step"] for r in storage.read_json_lines(path)] == [0, 1, 2, 3, 4, 5]


def test_logship_copies_stdin_to_stdout_and_to_a_parted_log(tmp_path):
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  path = str(tmp_path / "logs" / "worker.log")
  lines = "".join(f"step {i}\n" for i in range(450))
  out = subprocess.run([sys.executable, "-c", (
      "import sys; from mmpretrain import storage, logship; "
      "storage.is_local = lambda p: False; logship.main(sys.argv)"), path],
                       input=lines, capture_output=True, text=True, check=True)
  assert out.stdout == lines
  assert sorted(os.listdir(tmp_path / "logs")) == [     # 200-line parts, then the rest
      "worker-00000.log", "worker-00001.log", "worker-00002.log"]
  assert storage.read_lines(path) == lines.splitlines()
