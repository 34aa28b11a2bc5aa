"""`mmpretrain prepare`: builds what a config needs into config.data.data_dir, idempotently."""
import os

from mmpretrain.data import pipeline, sources
from mmpretrain.tokenizers.text import TextTokenizer, train_tokenizer


def tokenizer_corpus(config) -> list[str]:
  """Training text of every stream that has text: play excerpts and digit captions."""
  texts = sources.shakespeare_documents("train", config.data.text_doc_chars)
  captions = [sources.digit_caption(d) for d in range(len(sources.DIGIT_WORDS))]
  return texts + captions * 20


def prepare(config) -> str:
  """Trains the SentencePiece tokenizer unless one with the right size already exists."""
  path = pipeline.tokenizer_path(config)
  vocab_size = config.data.tokenizer.vocab_size
  if os.path.exists(path) and TextTokenizer(path).vocab_size == vocab_size:
    print(f"tokenizer ready: {path} ({vocab_size} ids)")
    return path
  if config.data.tokenizer.path:
    raise FileNotFoundError(f"data.tokenizer.path={path!r} is missing or has the wrong size; "
                            "point it at an existing model or leave it empty to train one")
  train_tokenizer(tokenizer_corpus(config), path, vocab_size)
  print(f"trained tokenizer: {path} ({vocab_size} ids)")
  return path
