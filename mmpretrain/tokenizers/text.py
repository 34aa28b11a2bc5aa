"""SentencePiece text tokenizer with the special tokens the multimodal sequence needs.

Ids: pad=0, unk=1, bos=2, eos=3, and <boi>/<eoi> (begin/end of image). A tokenizer trained
here has them as user symbols; a foreign SentencePiece model ("bring your tokenizer")
without them gets two extra ids appended after its vocabulary.
"""
import io
import os

import numpy as np
import sentencepiece as spm

from mmpretrain import storage

BOI, EOI = "<boi>", "<eoi>"


def train_tokenizer(texts, model_path: str, vocab_size: int) -> None:
  """Trains a BPE SentencePiece model offline on an iterable of strings."""
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe",
      vocab_size=vocab_size, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      user_defined_symbols=[BOI, EOI], byte_fallback=True, character_coverage=1.0,
      max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
  tmp = model_path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, model_path)  # never leave a half-written tokenizer behind


class TextTokenizer:
  """Encodes text to ids and back; knows the special ids and bytes per token."""

  def __init__(self, model_path: str):
    if not storage.exists(model_path):
      raise FileNotFoundError(
          f"tokenizer {model_path!r} not found: run \"mmpretrain prepare --config ...\" first")
    self.sp = spm.SentencePieceProcessor(model_proto=storage.read_bytes(model_path))
    size = self.sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = max(self.sp.pad_id(), 0), self.sp.bos_id(), self.sp.eos_id()
    boi, eoi = self.sp.piece_to_id(BOI), self.sp.piece_to_id(EOI)
    has_specials = boi != self.sp.unk_id() and eoi != self.sp.unk_id()
    self.boi_id, self.eoi_id = (boi, eoi) if has_specials else (size, size + 1)
    self.vocab_size = size if has_specials else size + 2

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.sp.get_piece_size()]
    return self.sp.decode(ids)

  def byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes each id stands for (0 for control tokens): the bits-per-byte denominator."""
    lengths = np.zeros(self.vocab_size, np.int32)
    for i in range(self.sp.get_piece_size()):
      if self.sp.is_control(i) or self.sp.is_unknown(i) or i in (self.boi_id, self.eoi_id):
        continue
      if self.sp.is_byte(i):
        lengths[i] = 1
      else:
        lengths[i] = len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths
