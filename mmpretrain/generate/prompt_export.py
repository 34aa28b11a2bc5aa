"""Images for a benchmark's prompts, written where its scorer reads them (`mmpretrain
sample --prompts=FILE`).

Prompts come from the user's copy of the benchmark:
- a JSON-lines file of objects with a `prompt` (GenEval's evaluation_metadata.jsonl);
- a folder of `<name>.txt` files, one prompt each (DPG-Bench's prompts/);
- any other text file: one prompt a line.

Layouts:
- `geneval`: `<out>/<index:05d>/metadata.jsonl` (the prompt's object, one line) and
  `<out>/<index:05d>/samples/<k:04d>.png` for each of the N images;
- `dpg`: `<out>/<name>.png`, the N images of `<name>.txt` in a √N × √N grid (N = 4: the
  scorer's default `--pic-num`).

The prompts are drawn a batch at a time over every device of the job (the sampler's rows
split over the mesh like a training batch) and each host writes the prompts whose index
it owns, so the writes are spread over hosts too. A re-run skips finished prompts; a batch
with any unfinished prompt is drawn again with its own key, so it gives the same images.
"""
import dataclasses
import json
import math
import os

import jax
import numpy as np

from mmpretrain import image_files, storage
from mmpretrain.generate.sample import ImageSampler, image_grid

LAYOUTS = ("auto", "geneval", "dpg")


@dataclasses.dataclass(frozen=True)
class Prompt:
  index: int
  name: str            # the dpg layout's file name (the prompt file's stem)
  text: str
  metadata: dict       # the geneval layout's metadata.jsonl


class BadPrompts(ValueError):
  """A prompt file or folder that cannot be read; the message names the file and line."""


def read_prompts(path: str) -> list[Prompt]:
  if storage.isdir(path):
    names = sorted(f for f in storage.listdir(path) if f.endswith(".txt"))
    if not names:
      raise BadPrompts(f"{path}: no <name>.txt prompt files in the folder")
    prompts = []
    for i, name in enumerate(names):
      text = storage.read_text(storage.join(path, name)).strip()
      if not text:
        raise BadPrompts(f"{storage.join(path, name)}: the prompt file is empty")
      prompts.append(Prompt(i, name[:-len(".txt")], text, {"prompt": text}))
    return prompts
  if not storage.exists(path):
    raise BadPrompts(f"{path}: no such prompt file or folder")
  lines = storage.read_text(path).splitlines()
  if path.endswith(".jsonl"):
    return [_json_prompt(path, number, line)
            for number, line in enumerate(lines, 1) if line.strip()]
  texts = [line.strip() for line in lines if line.strip()]
  return [Prompt(i, f"{i:05d}", text, {"prompt": text}) for i, text in enumerate(texts)]


def _json_prompt(path: str, number: int, line: str) -> Prompt:
  try:
    metadata = json.loads(line)
  except ValueError:
    metadata = None
  if not isinstance(metadata, dict) or not isinstance(metadata.get("prompt"), str):
    raise BadPrompts(f"{path}:{number}: not a JSON object with a string `prompt`; fix or "
                     "remove the line")
  return Prompt(number - 1, f"{number - 1:05d}", metadata["prompt"], metadata)


def resolve_layout(layout: str, prompts_path: str) -> str:
  if layout != "auto":
    return layout
  return "dpg" if storage.isdir(prompts_path) else "geneval"


class GenEvalLayout:
  def __init__(self, out: str, per_prompt: int):
    self.out, self.per_prompt = out, per_prompt

  def _samples(self, prompt: Prompt) -> str:
    return storage.join(self.out, f"{prompt.index:05d}", "samples")

  def done(self, prompt: Prompt) -> bool:
    return all(storage.exists(storage.join(self._samples(prompt), f"{k:04d}.png"))
               for k in range(self.per_prompt))

  def write(self, prompt: Prompt, images: np.ndarray) -> None:
    samples = self._samples(prompt)
    storage.makedirs(samples)
    storage.write_text(storage.join(storage.parent(samples), "metadata.jsonl"),
                       json.dumps(prompt.metadata) + "\n")
    for k, image in enumerate(images):    # the last sample written marks the prompt done
      storage.save_image(storage.join(samples, f"{k:04d}.png"), image_files.to_pil(image))


def geneval_samples(out: str) -> tuple[list[str], list[str]]:
  """(image paths, the prompt of each) of a folder in the geneval layout."""
  if not storage.isdir(out):
    raise FileNotFoundError(f"{out}: no such folder (give the --output of `mmpretrain sample "
                            "--prompts` in the geneval layout)")
  paths, captions = [], []
  for folder in sorted(storage.listdir(out)):
    metadata = storage.join(out, folder, "metadata.jsonl")
    if not storage.exists(metadata):
      continue
    try:
      prompt = json.loads(storage.read_text(metadata).splitlines()[0])["prompt"]
    except (ValueError, IndexError, KeyError, TypeError) as e:
      raise BadPrompts(f"{metadata}: not one JSON line with a `prompt`") from e
    samples = storage.join(out, folder, "samples")
    names = sorted(n for n in storage.listdir(samples) if n.endswith(".png"))
    paths += [storage.join(samples, n) for n in names]
    captions += [prompt] * len(names)
  if not paths:
    raise FileNotFoundError(f"{out}: no <index>/metadata.jsonl and samples/*.png (the "
                            "geneval layout of `mmpretrain sample --prompts`)")
  return paths, captions


class DpgLayout:
  def __init__(self, out: str, per_prompt: int):
    self.out, self.side = out, math.isqrt(per_prompt)
    if self.side ** 2 != per_prompt:
      raise ValueError(f"the dpg layout puts a prompt's images in a square grid, so "
                       f"--images_per_caption must be a square (4 for DPG-Bench), got "
                       f"{per_prompt}")

  def _path(self, prompt: Prompt) -> str:
    return storage.join(self.out, f"{prompt.name}.png")

  def done(self, prompt: Prompt) -> bool:
    return storage.exists(self._path(prompt))

  def write(self, prompt: Prompt, images: np.ndarray) -> None:
    storage.makedirs(self.out)
    storage.save_image(self._path(prompt), image_grid(images, self.side, scale=1))


def make_layout(layout: str, out: str, per_prompt: int):
  return {"geneval": GenEvalLayout, "dpg": DpgLayout}[layout](out, per_prompt)


def export_prompts(run, tok, params, prompts: list[Prompt], layout, per_prompt: int,
                   prompts_per_batch: int, seed: int, process: int | None = None,
                   processes: int | None = None) -> dict:
  """Draws `per_prompt` images of every unfinished prompt and writes this process's share
  (prompt index mod processes); every process of the job must call it. Returns counts."""
  process = jax.process_index() if process is None else process
  processes = jax.process_count() if processes is None else processes
  batches = [prompts[i:i + prompts_per_batch]
             for i in range(0, len(prompts), prompts_per_batch)]
  # Decided before anything is drawn, so that every process agrees on what to draw.
  finished = [all(map(layout.done, batch)) for batch in batches]
  sampler, written = ImageSampler(run, tok), 0
  for b, batch in enumerate(batches):
    if finished[b]:
      continue
    captions = [p.text for p in batch for _ in range(per_prompt)]
    captions += [""] * (prompts_per_batch * per_prompt - len(captions))   # one compile
    images = sampler(params, captions, jax.random.fold_in(jax.random.key(seed), b))
    for i, prompt in enumerate(batch):
      if prompt.index % processes == process and not layout.done(prompt):
        layout.write(prompt, images[i * per_prompt:(i + 1) * per_prompt])
        written += 1
  return {"prompts": len(prompts), "batches_drawn": finished.count(False),
          "prompts_written_here": written,
          "prompts_finished_before": sum(len(batch) for batch, f in zip(batches, finished) if f)}


def default_output(workdir: str, prompts_path: str) -> str:
  return storage.join(workdir, "prompt_images",
                      os.path.splitext(os.path.basename(prompts_path.rstrip("/")))[0])
