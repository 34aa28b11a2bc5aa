"""Text tokenizers with the special tokens the multimodal sequence needs: SentencePiece
models (`.model`, what `prepare` trains) and Hugging Face `tokenizer.json` files.

Every tokenizer has pad, bos and eos ids and <boi>/<eoi> (begin/end of image). One trained
here has them as ids 0, 2, 3 and user symbols; a foreign tokenizer ("bring your
tokenizer") keeps its own and, where it has no <boi>/<eoi>, gets two ids appended after its
vocabulary. `byte_lengths` gives the UTF-8 bytes each id stands for, so bits per byte
compare across tokenizers: exact for byte-level vocabularies, and for "▁"-marked ones
(SentencePiece, Llama 2) up to the one space they prepend to each text.
"""
import io
import json

import numpy as np
import sentencepiece as spm

from mmpretrain import storage

BOI, EOI = "<boi>", "<eoi>"


def train_tokenizer(texts, model_path: str, vocab_size: int) -> None:
  """Trains a BPE SentencePiece model offline on an iterable of strings."""
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe",
      vocab_size=vocab_size, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      user_defined_symbols=[BOI, EOI], byte_fallback=True, character_coverage=1.0,
      max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
  storage.makedirs(storage.parent(model_path))
  storage.write_bytes(model_path, buffer.getvalue())   # written whole: never half a model


def load_text_tokenizer(path: str):
  """The tokenizer at `path`: a Hugging Face tokenizer.json (`.json`) or a SentencePiece
  model (anything else)."""
  if not storage.exists(path):
    raise FileNotFoundError(
        f"tokenizer {path!r} not found: run \"mmpretrain prepare --config ...\" first")
  if path.endswith(".json"):
    return HuggingFaceTokenizer(storage.read_bytes(path).decode("utf-8"), path)
  return SentencePieceTokenizer(storage.read_bytes(path))


class SentencePieceTokenizer:
  """Encodes text to ids and back; knows the special ids and bytes per token."""

  def __init__(self, model_proto: bytes):
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
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


# Names foreign vocabularies use for their special tokens, most specific first.
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|endoftext|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "[SEP]", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizer.json` through the `tokenizers` library. bos / eos / pad are
  the vocabulary's own (by their usual names); without a pad token, padding uses eos (the
  loss never reads padding)."""

  def __init__(self, text: str, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.tokenizer = tokenizers.Tokenizer.from_str(text)
    spec = json.loads(text)
    # Byte-level vocabularies (GPT-2, Llama 3) spell each byte as one character.
    self.byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    size = self.tokenizer.get_vocab_size(with_added_tokens=True)
    def find(names, what):
      for name in names:
        if name in vocab:
          return vocab[name]
      if what == "pad":
        return None
      raise ValueError(f"{path}: no {what} token among {names}; add one to the tokenizer "
                       "(tokenizers' add_special_tokens) or use a SentencePiece model")
    self.bos_id, self.eos_id = find(_BOS_NAMES, "bos"), find(_EOS_NAMES, "eos")
    pad = find(_PAD_NAMES, "pad")
    self.pad_id = self.eos_id if pad is None else pad
    has_specials = BOI in vocab and EOI in vocab
    self.boi_id, self.eoi_id = (vocab[BOI], vocab[EOI]) if has_specials else (size, size + 1)
    self.vocab_size = size if has_specials else size + 2
    self._size = size
    self._special = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()
                     if t.special} | {BOI, EOI}

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids if 0 <= int(i) < self._size])

  def byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes each id stands for (0 for special tokens)."""
    lengths = np.zeros(self.vocab_size, np.int32)
    for piece, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
      if piece in self._special:
        continue
      if self.byte_level:
        lengths[i] = len(piece)
      elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        lengths[i] = 1                                    # byte fallback
      else:
        lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths


TextTokenizer = SentencePieceTokenizer | HuggingFaceTokenizer


def special_ids(tok: TextTokenizer) -> dict[str, int]:
  """The ids a document's layout needs: the `bos`, `eos`, `boi`, `eoi` keyword arguments
  of data/documents.py's builders."""
  return {"bos": tok.bos_id, "eos": tok.eos_id, "boi": tok.boi_id, "eoi": tok.eoi_id}
