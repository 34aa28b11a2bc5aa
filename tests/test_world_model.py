"""World-model rollouts and their metrics: the agent locator against MiniGrid's own agent
position, frame metrics on constructed frames, rollouts that never let a later action
change an earlier prediction, and the held-out evaluation end to end."""
import itertools
import gymnasium as gym
import jax
import minigrid  # pylint: disable=unused-import  # registers the environments
import numpy as np
import pytest
from minigrid.core.actions import Actions
from PIL import Image

from mmpretrain.generate import world_model
from mmpretrain.data import sources
from mmpretrain.data.documents import fit_frame
from mmpretrain.data.sources import MINIGRID_ENVS, MINIGRID_TILE
from mmpretrain.train.evaluate import WorldModelEval
from mmpretrain.train.step import Trainer

from conftest import all_streams_config
from mmpretrain import pixels
from mmpretrain.run import Run


@pytest.mark.parametrize("size", [32, 64])
def test_agent_cell_finds_the_agent_minigrid_placed(size):
  rng = np.random.default_rng(0)
  found = []
  for episode in range(15):
    env = gym.make(MINIGRID_ENVS[episode % len(MINIGRID_ENVS)], render_mode="rgb_array")
    env.reset(seed=episode)
    for _ in range(12):          # turns and walks: every direction, cells with objects around
      frame = fit_frame(env.unwrapped.get_frame(tile_size=MINIGRID_TILE, highlight=False),
                        size, 3)
      column, row = env.unwrapped.agent_pos
      found.append(tuple(world_model.agent_cell(frame)) == (row, column))
      if any(env.step(Actions(int(rng.choice(3))))[2:4]):
        break
    env.close()
  assert len(found) > 100 and all(found)


def test_agent_cell_refuses_grey_frames():
  with pytest.raises(ValueError, match="image_channels=3"):
    world_model.agent_cell(np.zeros((32, 32, 1), np.uint8))


def test_frame_metrics_on_frames_with_known_error():
  black, white = np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 8, 8, 3), 255, np.uint8)
  half = black.copy()
  half[:, :4] = 255                                       # half the pixels off by 1.0
  np.testing.assert_allclose(world_model.frame_mse(black, white), [1.0, 1.0])
  np.testing.assert_allclose(world_model.frame_mse(black, half), [0.5, 0.5])
  np.testing.assert_allclose(pixels.psnr(np.array([1.0, 0.01, 0.0]), 1.0), [0.0, 20.0, 100.0],
                             rtol=1e-6)


def frame_with_agent(row: int, column: int, size: int = 32) -> np.ndarray:
  cell = size // world_model.MINIGRID_CELLS
  frame = np.zeros((size, size, 3), np.uint8)
  frame[row * cell:(row + 1) * cell, column * cell:(column + 1) * cell] = np.round(
      world_model.agent_templates(cell)[1]).astype(np.uint8)
  return frame


def test_horizon_metrics_count_the_agent_in_the_right_cell():
  target = np.stack([[frame_with_agent(2, 3), frame_with_agent(2, 4)]] * 2)   # [B=2, H=2]
  predicted = target.copy()
  predicted[1, 1] = frame_with_agent(5, 4)               # one of the two moved wrongly
  metrics = world_model.horizon_metrics(predicted, target, horizons=(1, 2))
  assert metrics["agent_accuracy@1"] == 1.0 and metrics["agent_accuracy@2"] == 0.5
  assert metrics["mse@1"] == 0.0 and metrics["psnr@1"] == 100.0 and metrics["mse@2"] > 0


def world_config(data_dir: str):
  c = all_streams_config(data_dir)
  c.data.image_size = 32
  c.eval.world_model_episodes = 2
  c.eval.world_model_horizons = (1, 3)
  return c


def test_a_later_action_never_changes_an_earlier_predicted_frame(data_dir, tokenizer):
  config = world_config(data_dir)
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  params = trainer.init_state(0).params
  rollout = world_model.Rollout(trainer.run, tokenizer, context=4)
  frames, actions, missions = world_model.held_out_episodes(config, tokenizer, 2, 7)
  changed = [a[:4] + ["pickup" if a[4] != "pickup" else "left"] + a[5:] for a in actions]
  runs = [rollout(params, frames[:, :4], [a[3:6] for a in acts], missions, jax.random.key(1))
          for acts in (actions, changed)]
  np.testing.assert_array_equal(runs[0][:, 0], runs[1][:, 0])    # before the changed action
  assert (runs[0][:, 1] != runs[1][:, 1]).any()                   # from it on
  assert runs[0].shape == (2, 3, 32, 32, 3)
  video = rollout(params, frames[:, :4], None, None, jax.random.key(1), horizon=2)
  assert video.shape == (2, 2, 32, 32, 3)


def test_world_model_evaluation_reports_every_horizon_and_the_baseline(data_dir, tokenizer):
  config = world_config(data_dir)
  run = Run(config)
  results, images = WorldModelEval(run, tokenizer)(run.init_params(0))
  assert images["world_model_rollout"].shape == (2 * 32 + 1, 7 * 32, 3)  # 4 context + 3
  # The baseline, recomputed here from the held-out episodes in float64.
  frames, _, _ = world_model.held_out_episodes(config, tokenizer,
                                               config.eval.world_model_episodes, 4 + 3)
  last = frames[:, 3].astype(np.float64) / 255.0
  for h in (1, 3):
    target = frames[:, 3 + h].astype(np.float64) / 255.0
    mse = ((last - target) ** 2).mean(axis=(1, 2, 3))
    same_cell = (world_model.agent_cell(frames[:, 3]) ==
                 world_model.agent_cell(frames[:, 3 + h])).all(-1)
    baseline = {k: results[f"world_model/copy_last_frame/{k}@{h}"]
                for k in ("mse", "psnr", "agent_accuracy")}
    assert baseline["mse"] == pytest.approx(mse.mean())
    assert baseline["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-10))))
    assert baseline["agent_accuracy"] == same_cell.mean()
    assert set(results) >= {f"world_model/{k}@{h}" for k in ("mse", "psnr", "agent_accuracy")}
  # An untrained model draws noise: copying the last frame is far closer.
  assert results["world_model/copy_last_frame/psnr@1"] > results["world_model/psnr@1"]


def test_rollout_gifs_show_the_truth_above_the_prediction(data_dir, tokenizer, tmp_path):
  config = world_config(data_dir)
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  paths = world_model.write_rollouts(config, tokenizer, trainer.run, trainer.init_state(0).params,
                                     episodes=1, horizon=2, actions=False,
                                     output=str(tmp_path), tag="test")
  with Image.open(paths[0]) as gif:
    assert gif.n_frames == 4 + 2                        # the context, then the predictions
    assert gif.size == (32 * 4, (2 * 32 + 1) * 4)      # upscaled 4×


def test_every_move_changes_the_frame_as_its_action_says():
  offsets = {"right": (0, 1), "down": (1, 0), "left": (0, -1), "up": (-1, 0)}
  for frames, actions, _ in itertools.islice(sources.minigrid_moves("validation", 40, 16), 4):
    cells = world_model.agent_cell(frames)
    assert len(frames) == len(actions) + 1 == 17
    for t, action in enumerate(actions):
      assert (frames[t] != frames[t + 1]).any(), (t, action)
      assert tuple(cells[t + 1] - cells[t]) == offsets[action], (t, action, cells[t],
                                                                  cells[t + 1])
