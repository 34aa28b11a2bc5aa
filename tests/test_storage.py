"""Run files through mmpretrain.storage: local writes are atomic, the metrics log appends
locally and is rewritten whole where an object store cannot append, and URLs are never
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


def test_on_an_object_store_the_log_is_rewritten_whole(tmp_path, monkeypatch):
  """No append on gs://: the same log object with the local file standing in for it."""
  monkeypatch.setattr(storage, "is_local", lambda path: False)
  path = str(tmp_path / "metrics.jsonl")
  storage.write_text(path, '{"step": 0}\n')          # left by the run before a restart
  log = storage.JsonLines(path)
  assert log.file is None
  log.write({"step": 1})
  log.write({"step": 2})
  assert storage.read_text(path).splitlines() == ['{"step": 0}', '{"step": 1}', '{"step": 2}']
