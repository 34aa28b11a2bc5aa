"""Token counts of prepared datasets: the Beam count over record ranges equals a plain
count record by record with the same tokenizer, and a count made is kept and read back."""
import os
import shutil

from conftest import TOKENIZER, tiny_config
from mmpretrain import storage
from mmpretrain.data import builders, streams, token_counts
from mmpretrain.tokenizers.text import load_text_tokenizer


def brute_force(dataset: token_counts.Dataset, tokenizer_path: str) -> dict:
  tok = load_text_tokenizer(tokenizer_path)
  out = {}
  for split in dataset.splits:
    source = builders.open_split(dataset.tfds_name, split, dataset.data_dir)
    text = {field: 0 for field, _ in dataset.text_keys}
    frames = 0
    for i in range(len(source)):
      record = source[i]
      for field, key in dataset.text_keys:
        values = record[key] if isinstance(record[key], (list, tuple)) or getattr(
            record[key], "ndim", 0) else [record[key]]
        text[field] += sum(len(tok.encode(streams.as_text(v))) for v in values)
      for key in dataset.frame_keys:
        value = record[key]
        frames += len(value) if isinstance(value, (list, tuple)) or getattr(
            value, "ndim", 0) else 1
    out[split] = {"records": len(source), "unreadable": 0, "frames": frames,
                  "text_tokens": text}
  return out


def test_counts_over_many_ranges_equal_a_plain_count(data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(token_counts, "RECORDS_PER_PIECE", 700)      # several ranges a split
  tokenizer = os.path.join(data_dir, TOKENIZER)
  config = tiny_config(str(tmp_path))
  for name in ("mnist_captions", "minigrid_episodes"):
    tfds_name = config.data.datasets[name].tfds_name
    shutil.copytree(os.path.join(data_dir, tfds_name), tmp_path / tfds_name)
    for stale in (tmp_path / tfds_name).rglob("tokens-*.json"):
      stale.unlink()
    dataset = token_counts.Dataset.of(config, name)
    counts = token_counts.count_tokens(dataset, tokenizer, workers=1)
    expected = brute_force(dataset, tokenizer)
    assert counts["splits"] == expected, name
    assert all(sum(c["text_tokens"].values()) > 0 for c in expected.values())
    path = token_counts.counts_path(dataset, tokenizer)
    storage.write_json(path, {**counts, "kept": True})               # a count there is kept
    assert token_counts.count_tokens(dataset, tokenizer)["kept"]


def test_prepare_keeps_the_counts_beside_each_dataset(data_dir):
  from mmpretrain.data.pipeline import tokenizer_path  # pylint: disable=import-outside-toplevel
  config = tiny_config(data_dir)
  config.data.tokenizer.path = ""
  for name in ("shakespeare_plays", "mnist_captions"):
    dataset = token_counts.Dataset.of(config, name)
    path = token_counts.counts_path(dataset, tokenizer_path(config))
    assert storage.exists(path), path
    splits = storage.read_json(path)["splits"]
    assert set(splits) == {"train", "validation"}
    assert splits["train"]["records"] == len(builders.open_split(dataset.tfds_name, "train",
                                                                 data_dir))
