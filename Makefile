# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test bench pretrained-weights clean

# The OpenGL renderer (meshrec.render.gl) needs EGL and Mesa. Installed when we can (root with
# apt-get); otherwise the exact command is printed, and the tests that need it are skipped.
EGL_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri
system-deps:
	@if ! ldconfig -p 2>/dev/null | grep -q libEGL_mesa; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(EGL_PACKAGES) >/dev/null) \
	      || echo "meshrec: could not install $(EGL_PACKAGES); the OpenGL renderer will be unavailable"; \
	  else \
	    echo "meshrec: for the OpenGL renderer run: sudo apt-get install $(EGL_PACKAGES)"; \
	  fi; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: system-deps $(BIN)/.installed

# The main job: synthetic data, ~9 minutes of mixed-supervision training, evaluation, meshes.
demo: setup
	$(BIN)/meshrec demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_manolayer.py
	$(BIN)/python benchmarks/bench_model.py

# Rebuilds meshrec's bundled starting weights (model.weights: synthetic-hands) from nothing:
# 40,000 synthetic hands (seed 7), 2D keypoint training (configs/pretrain.yaml), export.
# About 30 minutes on 2 CPU cores (synth 1 minute, 9,500 training steps 26 minutes).
pretrained-weights: setup
	$(BIN)/meshrec synth --out data/pretrain --num 40000 --seed 7 --eval-fraction 0.05
	$(BIN)/meshrec train --config configs/pretrain.yaml
	$(BIN)/meshrec export-weights --half --checkpoint runs/pretrain/checkpoints/last.ckpt \
	  --out meshrec/models/weights/synthetic_hands.pt \
	  --note "make pretrained-weights: configs/pretrain.yaml on data/pretrain (meshrec synth --num 40000 --seed 7 --eval-fraction 0.05)"

clean:
	rm -rf $(VENV) .pytest_cache
