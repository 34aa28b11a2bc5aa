"""Text tokenizers: SentencePiece models and Hugging Face tokenizer.json files (byte-level
and byte-fallback BPE, trained here with the `tokenizers` library) map text to ids and back,
know the batch contract's special ids, and count UTF-8 bytes exactly (bits per byte)."""
import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mmpretrain.tokenizers.text import BOI, EOI, load_text_tokenizer, train_tokenizer

CORPUS = ["To be, or not to be: that is the question.", "Café au lait, naïve façade — über!",
          "日本語のテキストも少し。", "Numbers 12345 and symbols #@%&*"] * 20
TEXTS = ["To be or not, café — 日本 über 42!", "a", "zebra quixotic jumps"]   # unseen letters


def byte_level(path, specials):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path))
  return str(path)


def byte_fallback(path, specials):
  """BPE over "▁"-marked words whose model vocabulary starts with the 256 byte tokens
  (<0x00>…<0xFF>), for characters it never saw: the layout of Llama 2's tokenizer.json."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300))
  trained = json.loads(tok.to_str())["model"]
  vocab = {f"<0x{b:02X}>": b for b in range(256)}
  for piece in sorted(trained["vocab"], key=trained["vocab"].get):
    vocab.setdefault(piece, len(vocab))
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens(specials)
  tok.save(str(path))
  return str(path)


def sentencepiece(path, _):
  train_tokenizer(CORPUS, str(path), 400)
  return str(path)


# maker, file name, bytes the tokenizer prepends to each text (a "▁" before the first word)
MAKERS = {"byte_level": (byte_level, "tok.json", 0),
          "byte_fallback": (byte_fallback, "tok.json", 1),
          "sentencepiece": (sentencepiece, "tok.model", 1)}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_round_trip_and_exact_byte_counts(kind, tmp_path):
  make, name, prefix = MAKERS[kind]
  tok = load_text_tokenizer(make(tmp_path / name, ["<s>", "</s>", "<pad>"]))
  lengths = tok.byte_lengths()
  assert lengths.shape == (tok.vocab_size,)
  for text in TEXTS:
    ids = tok.encode(text)
    if kind != "sentencepiece":   # SentencePiece normalises whitespace runs
      assert tok.decode(ids) == text
    assert int(lengths[np.asarray(ids)].sum()) == len(text.encode("utf-8")) + prefix, text
  specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id]
  assert len(set(specials)) == 5 and all(lengths[i] == 0 for i in specials)


def test_foreign_vocabulary_gets_image_ids_appended_and_keeps_its_own(tmp_path):
  tok = load_text_tokenizer(byte_level(tmp_path / "tok.json", ["<s>", "</s>"]))
  size = tokenizers.Tokenizer.from_file(str(tmp_path / "tok.json")).get_vocab_size()
  assert (tok.boi_id, tok.eoi_id, tok.vocab_size) == (size, size + 1, size + 2)
  assert tok.pad_id == tok.eos_id                      # no <pad>: padding reuses eos
  with_image = load_text_tokenizer(byte_level(tmp_path / "img.json", ["<s>", "</s>", BOI, EOI]))
  assert with_image.vocab_size == with_image.tokenizer.get_vocab_size()
  assert with_image.decode([with_image.boi_id, *with_image.encode("hi")]) == "hi"


def test_a_vocabulary_without_bos_or_eos_is_refused_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match="no bos token.*add_special_tokens"):
    load_text_tokenizer(byte_level(tmp_path / "tok.json", []))


def test_a_missing_tokenizer_says_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="mmpretrain prepare"):
    load_text_tokenizer(str(tmp_path / "absent.json"))


def test_a_run_trains_with_a_hugging_face_tokenizer(data_dir, tmp_path):
  from conftest import tiny_config                  # pylint: disable=import-outside-toplevel
  from mmpretrain.train.loop import train           # pylint: disable=import-outside-toplevel
  path = byte_level(tmp_path / "tokenizer.json", ["<s>", "</s>", "<pad>"])
  config = tiny_config(data_dir)
  config.data.tokenizer.path = path
  config.data.tokenizer.vocab_size = load_text_tokenizer(path).vocab_size
  config.train.num_steps, config.sample.captions = 6, []
  summary = train(config, str(tmp_path / "run"))
  assert summary["last"]["text_loss"] < summary["first"]["text_loss"]
  assert 0 < summary["last"]["text_bits_per_byte"] < summary["first"]["text_bits_per_byte"]
