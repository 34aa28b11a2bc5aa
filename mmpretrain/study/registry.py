"""The paper's experiments: what each asks, the config it starts from at each scale, its
arms (config overrides on that base, as `--config.<key>=<value>` would set them), what it
plots and against what.

An arm that needs something this repository does not have yet (an architecture, an
encoder's description, a data stream) names it in `needs` and is refused by the plan with
that reason, never approximated by a look-alike config.
"""
import dataclasses
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALES = ("paper", "mini")
# Representation shapes the paper configs read (configs/paper/vae_1b.py names the same).
VAE_F8C16 = os.path.join(ROOT, "configs", "paper", "vae_f8c16")
DEMO_VAE, DEMO_RAE = "runs/demo_vae/representation", "runs/demo_rae/representation"


@dataclasses.dataclass(frozen=True)
class Arm:
  """One run of an experiment (every run of an IsoFLOP grid): its overrides on the
  experiment's base at each scale; `needs` says what is missing to run it."""
  name: str
  paper: dict = dataclasses.field(default_factory=dict)
  mini: dict = dataclasses.field(default_factory=dict)
  needs: str = ""

  def overrides(self, scale: str) -> dict:
    return dict(getattr(self, scale))


def both(name: str, overrides: dict, needs: str = "") -> Arm:
  """An arm whose overrides are the same at both scales."""
  return Arm(name, dict(overrides), dict(overrides), needs)


@dataclasses.dataclass(frozen=True)
class Metric:
  """A figure's y: `key` is `section.name` of a results.jsonl line (scaling/fit.py's
  metric_value reads it); `needs`: what must exist before runs report it."""
  key: str
  label: str
  needs: str = ""


@dataclasses.dataclass(frozen=True)
class Axes:
  """x: "arm" (a bar per arm, in registry order), a key of the run's plan, or a dotted
  config key; `group`: a plan key whose values get a line each (an IsoFLOP budget)."""
  x: str = "arm"
  log_x: bool = False
  group: str = ""


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  finding: str                # one line: the question, and the paper's answer
  bases: dict                 # scale -> config argument, path[:arg] from the repository root
  arms: tuple
  metrics: tuple
  axes: Axes = Axes()
  budgets: dict = dataclasses.field(default_factory=dict)
  # An IsoFLOP experiment: scale -> budgets in model FLOPs (an empty tuple keeps the base's
  # scaling.budgets); each arm then becomes the base's grid of budgets × widths.

  @property
  def isoflop(self) -> bool:
    return bool(self.budgets)


TEXT = Metric("eval.text/text_loss", "held-out text loss")
IMAGE_FLOW = Metric("eval.image_text/flow_loss", "held-out image–text flow loss")
VIDEO_FLOW = Metric("eval.video/flow_loss", "held-out video flow loss")
ACTION_FLOW = Metric("eval.action_video/flow_loss", "held-out action-video flow loss")
ROLLOUT_PSNR = Metric("eval.world_model/psnr@4", "rollout PSNR at horizon 4")
FID = Metric("eval.generation/fid", "FID of drawn images",
             needs="a run that draws images at paper scale for `mmpretrain fid` and records "
                   "the score in its results")
VQA = Metric("eval.vqa/accuracy", "VQAv2 accuracy",
             needs="a VQA evaluation that asks the model questions (vqa/ scores answers, "
                   "nothing produces them)")

# The paper's MoE layer on the 1B model (configs/paper/moe_1b.py on dense_1b.py): 64
# experts of granularity 16, 16 active, per-modality shared experts, sigmoid router, and
# its TPU dispatch layout.
MOE = {"model.moe.num_experts": 4, "model.moe.experts_per_token": 1,
       "model.moe.granularity": 16, "model.moe.shared_experts": "per_modality",
       "model.moe.router": "sigmoid", "model.moe.first_dense_layers": 1,
       "model.moe.capacity_impl": "einsum", "model.moe.capacity_group_tokens": 128,
       "model.moe.remat_keep_hidden": True}
# configs/paper/moe_1b_1008.py's layout on moe_1b.py: row gathers, capacity groups of a
# chip's rows and an expert axis, which the one-hot dispatch stops paying for with many
# experts.
MANY_EXPERTS_LAYOUT = {"model.moe.capacity_impl": "gather", "model.moe.capacity_group_tokens": 0,
                       "model.moe.capacity_group_rows": 8, "model.moe.capacity_factor": 1.1,
                       "mesh.fsdp": 4, "mesh.expert": 8}
VAE = {"visual.representation": "vae", "visual.checkpoint": VAE_F8C16,
       "visual.patch_size": 2, "data.image_size": 256}              # configs/paper/vae_1b.py
PIXELS = {"visual.representation": "pixels", "visual.checkpoint": "",
          "visual.patch_size": 14, "visual.cached_latents": False}  # configs/paper/pixels_1b.py
# The demo's stages at mini scale (`make demo`; `mmpretrain train-vae` for the VAE).
MINI_VAE = {"visual.representation": "vae", "visual.checkpoint": DEMO_VAE,
            "visual.patch_size": 2}
MINI_RAE = {"visual.representation": "rae", "visual.checkpoint": DEMO_RAE,
            "visual.patch_size": 1}
V_PREDICTION = {"diffusion.prediction": "v"}


def mixture(text: float, image_text: float, video: float, action_video: float) -> dict:
  """Token shares of the four streams, as the paper mixes its data."""
  return {"data.mixture_unit": "tokens", "data.mixture.text": text,
          "data.mixture.image_text": image_text, "data.mixture.video": video,
          "data.mixture.action_video": action_video}


def _progression() -> tuple:
  """Cumulative: each arm adds one change to the one before it."""
  return (
      Arm("transfusion", {**VAE, **V_PREDICTION}, {**MINI_VAE, **V_PREDICTION}),
      Arm("modality_ffns", {**VAE, **V_PREDICTION, "model.modality_ffn": True},
          {**MINI_VAE, **V_PREDICTION, "model.modality_ffn": True}),
      Arm("siglip2_rae", {**V_PREDICTION, "model.modality_ffn": True},
          {**MINI_RAE, **V_PREDICTION, "model.modality_ffn": True}),
      Arm("moe", {**MOE, **V_PREDICTION}, {**MINI_RAE, **MOE, **V_PREDICTION}),
      Arm("x_prediction", dict(MOE), {**MINI_RAE, **MOE}))


_SPARSITY = (32, 64, 128, 256, 512, 1008)    # routed experts after granularity 16
_VQA_NEEDS = ("a VQA stream: data/streams.py makes no question–answer documents "
              "(prepare's vqa_jsonl format converts the records)")
_WORLD_MODEL_WEIGHTS = (0.0, 0.01, 0.05, 0.1, 0.25)

EXPERIMENTS = {e.name: e for e in (
    Experiment(
        "separation",
        "How should one model keep the modalities apart at equal active compute: one "
        "shared FFN, modality FFNs, Mixture-of-Transformers or MoE? (paper: MoE)",
        {"paper": "configs/paper/dense_1b.py",
         "mini": "configs/ablations/ffn_type.py:dense,runlocal"},
        (both("shared_ffn", {}), both("modality_ffn", {"model.modality_ffn": True}),
         both("mot", {"model.mot": True}),
         both("moe", MOE)),
        (TEXT, IMAGE_FLOW)),
    Experiment(
        "granularity",
        "Does splitting each expert into G finer ones, active and total parameters fixed, "
        "keep helping? (paper: yes, up to G = 16)",
        {"paper": "configs/paper/moe_1b.py",
         "mini": "configs/ablations/granularity.py:16,runlocal"},
        # The shared experts keep the base's width (5632 / 16) rather than follow G, as the
        # mini base's explicit shared_mlp_dim does: only the routed experts are split.
        tuple(Arm(f"g{g}", {"model.moe.granularity": g, "model.moe.shared_mlp_dim": 352},
                  {"model.moe.granularity": g}) for g in (1, 2, 4, 8, 16)),
        (TEXT, IMAGE_FLOW), Axes("model.moe.granularity", log_x=True)),
    Experiment(
        "sparsity",
        "Do more routed experts at a fixed 16 active, 32 to 1,008 so that only the total "
        "parameters grow, keep lowering both losses? (paper: yes)",
        {"paper": "configs/paper/moe_1b.py",
         "mini": "configs/ablations/total_experts.py:64,runlocal"},
        tuple(Arm(f"e{e}", {"model.moe.num_experts": e // 16,
                            **(MANY_EXPERTS_LAYOUT if e > 64 else {})},
                  {"model.moe.num_experts": e // 16}) for e in _SPARSITY),
        (TEXT, IMAGE_FLOW), Axes("total_experts", log_x=True)),
    Experiment(
        "shared_experts",
        "Which always-on experts at equal active compute: none, one for every token, or "
        "one per modality? (paper: one per modality)",
        {"paper": "configs/paper/moe_1b.py",
         "mini": "configs/ablations/shared_experts.py:per_modality,runlocal"},
        # Without a shared expert the routed ones widen by its hidden size (paper: 16 × 352
        # + 352 = 16 × 374) or, where it is as wide as all of them, double in number.
        (Arm("none", {"model.moe.shared_experts": "none", "model.moe.expert_mlp_dim": 5984},
             {"model.moe.shared_experts": "none", "model.moe.experts_per_token": 2}),
         both("global", {"model.moe.shared_experts": "global"}),
         both("per_modality", {"model.moe.shared_experts": "per_modality"})),
        (TEXT, IMAGE_FLOW)),
    Experiment(
        "progression",
        "The path from Transfusion to the paper's recipe, one change at a time: modality "
        "FFNs, the SigLIP 2 RAE, MoE, x-prediction (paper: each step helps)",
        {"paper": "configs/paper/dense_1b.py", "mini": "configs/scaling/mini.py"},
        _progression(), (TEXT, IMAGE_FLOW, FID)),
    Experiment(
        "encoders",
        "Which visual representation serves understanding and generation at once: VAEs, "
        "semantic encoders as RAEs, or pixels? (paper: the SigLIP 2 RAE)",
        {"paper": "configs/paper/dense_1b.py",
         "mini": "configs/ablations/visual_rep.py:pixels"},
        (both("sd_vae", {}, needs="SD-VAE's shapes (f8, 4 channels) described beside "
              "configs/paper/vae_f8c16, the only VAE described"),
         Arm("flux_vae", dict(VAE), dict(MINI_VAE)),
         Arm("siglip2", {}, dict(MINI_RAE)),
         both("dinov2", {}, needs="an RAE on DINOv2 described in configs/paper/ (a "
              "rae.json like rae_so400m_224's; encoders/ reads DINOv2 checkpoints)"),
         both("webssl", {}, needs="an RAE on a WebSSL encoder described in configs/paper/"),
         Arm("pixels", dict(PIXELS), {})),
        (TEXT, IMAGE_FLOW, FID, VQA)),
    Experiment(
        "data_composition",
        "Does visual data cost language? Text alone against text with video, image–text "
        "or both (paper: no, and video even helps)",
        {"paper": "configs/paper/world_model_1b.py", "mini": "configs/four_streams.py"},
        (both("text", mixture(1, 0, 0, 0)), both("text_video", mixture(0.5, 0, 0.5, 0)),
         both("text_image_text", mixture(0.5, 0.5, 0, 0)),
         both("text_image_text_video", mixture(0.5, 0.25, 0.25, 0)),
         both("all", mixture(0.25, 0.25, 0.25, 0.25))),
        (TEXT, IMAGE_FLOW, VIDEO_FLOW)),
    Experiment(
        "vqa_data",
        "Does VQA data in the pretraining mixture raise VQA accuracy, and at what cost to "
        "text and generation?",
        {"paper": "configs/paper/dense_1b.py", "mini": "configs/scaling/mini.py"},
        (both("none", {}),) + tuple(both(f"vqa_{p}pct", {}, needs=_VQA_NEEDS)
                                    for p in (1, 5, 10)),
        (VQA, TEXT, IMAGE_FLOW)),
    Experiment(
        "world_model_ratio",
        "How little action-conditioned video does world modeling need once the model "
        "sees general video and images? (paper: a small share suffices)",
        {"paper": "configs/paper/world_model_1b.py", "mini": "configs/four_streams.py"},
        tuple(both(f"nav_{w:g}", {"data.mixture_unit": "tokens",
                                  "data.mixture.action_video": w})
              for w in _WORLD_MODEL_WEIGHTS),
        (ACTION_FLOW, ROLLOUT_PSNR, TEXT), Axes("data.mixture.action_video")),
    Experiment(
        "isoflop_dense",
        "Dense IsoFLOP curves per modality: vision's loss-optimal model is smaller, its "
        "data larger, than language's at each budget (paper: D_opt ∝ C^0.63 vs C^0.53)",
        {"paper": "configs/paper/isoflop_dense.py", "mini": "configs/scaling/mini.py"},
        (both("dense", {}),), (TEXT, IMAGE_FLOW), Axes("params", log_x=True, group="budget"),
        budgets={"paper": (6e18, 6e19, 3e20, 6e20, 1e21), "mini": ()}),
    Experiment(
        "isoflop_moe",
        "MoE IsoFLOP curves per modality: sparsity narrows the gap between language's and "
        "vision's optimal data (paper: MoE harmonizes the asymmetry)",
        {"paper": "configs/paper/isoflop_moe.py", "mini": "configs/scaling/mini.py"},
        # The mini grid's narrowest model has one layer: every layer is MoE there.
        (Arm("moe", {}, {**MOE, "model.moe.first_dense_layers": 0}),),
        (TEXT, IMAGE_FLOW), Axes("params", log_x=True, group="budget"),
        budgets={"paper": (2e19, 6e19, 2e20, 6e20), "mini": ()}),
)}


def experiment(name: str) -> Experiment:
  if name not in EXPERIMENTS:
    raise ValueError(f"no experiment {name!r}: use one of {', '.join(EXPERIMENTS)} "
                     "(mmpretrain study --list)")
  return EXPERIMENTS[name]


def check_scale(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"no scale {scale!r}: use one of {', '.join(SCALES)}")
  return scale
