"""The `vqa_jsonl` source format through `prepare`'s pipeline on its local runner: JSON
lines of {image, question, answers} beside their PNGs, a corrupt record of each kind
counted by its reason, and every good record read back as it was written."""
from test_convert import image_bytes, jsonl, read_all, write

from mmpretrain.data.convert.build import build_dataset

ANSWERS = [["2"] * 7 + ["two", "3", "2"], ["yes"] * 10, ["red"] * 4 + ["dark red"] * 6,
           ["none", "0", "0", "zero", "0", "0", "0", "0", "1", "0"]]


def make_questions(root):
  """Four good questions for train and one for validation, each image a PNG relative to
  its list, and one line of each corrupt kind."""
  for k in range(5):
    write(root / f"vqa/images/{k}.png", image_bytes(k))
  write(root / "vqa/images/broken.png", b"\x89PNG truncated")
  good = [{"image": f"images/{k}.png", "question": f"how gray is square {k}?",
           "answers": ANSWERS[k]} for k in range(4)]
  corrupt = [{"image": "images/0.png", "question": "where are the answers?"},
             {"image": "images/broken.png", "question": "what is this?", "answers": ["x"]},
             {"image": "images/absent.png", "question": "what is gone?", "answers": ["y"]},
             {"image": "images/1.png", "question": "one answer?", "answers": "yes"}]
  write(root / "vqa/train.jsonl", jsonl(good[:2] + corrupt) + b"{not json\n" + jsonl(good[2:]))
  write(root / "vqa/validation.jsonl", jsonl([{"image": "images/4.png",
                                               "question": "how many squares?",
                                               "answers": ["1"] * 10}]))


def test_vqa_jsonl_converts_and_reads_back(tmp_path):
  make_questions(tmp_path)
  result = build_dataset({"format": "vqa_jsonl", "train": f"{tmp_path}/vqa/train.jsonl",
                          "validation": f"{tmp_path}/vqa/validation.jsonl", "workers": 1},
                         "my_vqa", str(tmp_path))
  assert result["examples"] == {"train": 4, "validation": 1}
  assert result["corrupt"] == {"missing_field": 1, "bad_image": 1, "missing_file": 1,
                               "bad_answers": 1, "bad_json": 1}
  records = read_all(str(tmp_path), "my_vqa")
  train = sorted(records["train"], key=lambda r: r["question"])
  assert [r["question"].decode() for r in train] == [f"how gray is square {k}?"
                                                     for k in range(4)]
  for k, record in enumerate(train):
    assert record["image"] == image_bytes(k)            # the PNG as stored, byte for byte
    assert [a.decode() for a in record["answers"]] == ANSWERS[k]
  (validation,) = records["validation"]
  assert validation["question"].decode() == "how many squares?"
  assert validation["image"] == image_bytes(4)
  assert [a.decode() for a in validation["answers"]] == ["1"] * 10
