# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test bench bench-accuracy model real-photos clean

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

# The main job (5-9 minutes on 2 cores, set-up included): the bundled model fine-tuned on a shifted synthetic domain with
# 2D keypoints only, sparse 3D keypoints and full meshes, scored before and after (meshrec demo).
demo: setup
	$(BIN)/meshrec demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_manolayer.py
	$(BIN)/python benchmarks/bench_model.py

# Rebuilds meshrec's bundled model ('synthetic-hands': the whole network) from nothing:
# 100,000 synthetic hands (seed 11), stage 1 without the refinement (configs/model_stage1.yaml,
# 50 minutes), stages 1b and 1c train it on (configs/model_stage1b.yaml, 85 minutes;
# configs/model_stage1c.yaml, 70 minutes), stage 2 with the refinement (configs/model_stage2.yaml,
# 50 minutes), stage 3 trains it on with the per-joint variance head (configs/model_stage3.yaml,
# 100 minutes), stages 4 and 5 train it on again (configs/model_stage4.yaml, 95 minutes;
# configs/model_stage5.yaml, 100 minutes), stage 6 on 80,000 hands it has not seen (data/model_b,
# seed 12; configs/model_stage6.yaml, 92 minutes), stage 7 on 80,000 more (data/model_c, seed 13;
# configs/model_stage7.yaml, 100 minutes), stage 8 retraining only the mesh refinement (the
# per-joint variance head among it) on 80,000 more (data/model_e, seed 15; configs/model_stage8.yaml,
# 35 minutes), stage 9 training the whole network on 80,000 more (data/model_f, seed 16;
# configs/model_stage9.yaml, 65 minutes), stage 10 training it on 80,000 more (data/model_g, seed 17;
# configs/model_stage10.yaml, 92 minutes), the last stage retraining only the per-joint variance
# head on them (configs/model.yaml, 15 minutes), the accuracy benchmark, export. About 16 hours on 2 CPU cores;
# far less on a GPU (trainer.accelerator=auto picks it).
model: setup
	$(BIN)/meshrec synth --out data/model --num 100000 --seed 11 --eval-fraction 0.02 --no-progress
	$(BIN)/meshrec train --config configs/model_stage1.yaml
	$(BIN)/meshrec train --config configs/model_stage1b.yaml
	$(BIN)/meshrec train --config configs/model_stage1c.yaml
	$(BIN)/meshrec train --config configs/model_stage2.yaml
	$(BIN)/meshrec train --config configs/model_stage3.yaml
	$(BIN)/meshrec train --config configs/model_stage4.yaml
	$(BIN)/meshrec train --config configs/model_stage5.yaml
	$(BIN)/meshrec synth --out data/model_b --num 80000 --seed 12 --eval-fraction 0.025 --no-progress
	$(BIN)/meshrec train --config configs/model_stage6.yaml
	$(BIN)/meshrec synth --out data/model_c --num 80000 --seed 13 --eval-fraction 0.025 --no-progress
	$(BIN)/meshrec train --config configs/model_stage7.yaml
	$(BIN)/meshrec synth --out data/model_e --num 80000 --seed 15 --eval-fraction 0.025 --no-progress
	$(BIN)/meshrec train --config configs/model_stage8.yaml
	$(BIN)/meshrec synth --out data/model_f --num 80000 --seed 16 --eval-fraction 0.025 --no-progress
	$(BIN)/meshrec train --config configs/model_stage9.yaml
	$(BIN)/meshrec synth --out data/model_g --num 80000 --seed 17 --eval-fraction 0.025 --no-progress
	$(BIN)/meshrec train --config configs/model_stage10.yaml
	$(BIN)/meshrec train --config configs/model.yaml
	$(BIN)/python benchmarks/bench_accuracy.py --checkpoint runs/model/checkpoints/last.ckpt --out runs/model/bench_accuracy.json
	$(BIN)/meshrec export-weights --half --checkpoint runs/model/checkpoints/last.ckpt \
	  --out meshrec/models/weights/synthetic_hands.pt --scores runs/model/bench_accuracy.json \
	  --note "make model: configs/model_stage1.yaml, configs/model_stage1b.yaml, configs/model_stage1c.yaml, configs/model_stage2.yaml, configs/model_stage3.yaml, configs/model_stage4.yaml, configs/model_stage5.yaml on data/model (meshrec synth --num 100000 --seed 11 --eval-fraction 0.02), configs/model_stage6.yaml on data/model_b (meshrec synth --num 80000 --seed 12 --eval-fraction 0.025), configs/model_stage7.yaml on data/model_c (meshrec synth --num 80000 --seed 13 --eval-fraction 0.025), configs/model_stage8.yaml on data/model_e (meshrec synth --num 80000 --seed 15 --eval-fraction 0.025), configs/model_stage9.yaml on data/model_f (meshrec synth --num 80000 --seed 16 --eval-fraction 0.025), configs/model_stage10.yaml, then configs/model.yaml on data/model_g (meshrec synth --num 80000 --seed 17 --eval-fraction 0.025)"

# Real hand photos with the detector's keypoints as 2D labels, for configs/model_real_photos.yaml
# (an experiment, not part of `make model`; docs/benchmarks.md, "Real photos in training"): two
# Apache-2.0 collections on GitHub at pinned commits, flattened into data/real_photos and labelled
# by `meshrec pseudo-label` (the photos are not part of meshrec; see their LICENSE files).
HANDS_REPO ?= https://github.com/SubhiH/HandsDataset
HANDS_COMMIT := 73228cb5ba6a8d454663aa9873157862b69a1c4c
DIGITS_REPO ?= https://github.com/ardamavi/Sign-Language-Digits-Dataset
DIGITS_COMMIT := 4b09433ef9d5c60602e8805bb54b8aa2428527f8
REAL_PHOTOS ?= data/real_photos
real-photos: $(REAL_PHOTOS)/labels.jsonl
$(REAL_PHOTOS)/labels.jsonl: | setup
	rm -rf $(REAL_PHOTOS).tmp && mkdir -p $(REAL_PHOTOS).tmp/HandsDataset $(REAL_PHOTOS).tmp/Sign-Language-Digits-Dataset
	git clone -q $(HANDS_REPO) $(REAL_PHOTOS).tmp/hands-repo && git -C $(REAL_PHOTOS).tmp/hands-repo checkout -q $(HANDS_COMMIT)
	git clone -q $(DIGITS_REPO) $(REAL_PHOTOS).tmp/digits-repo && git -C $(REAL_PHOTOS).tmp/digits-repo checkout -q $(DIGITS_COMMIT)
	cp $(REAL_PHOTOS).tmp/hands-repo/images/*.jpg $(REAL_PHOTOS).tmp/HandsDataset/
	for digit in 0 1 2 3 4 5 6 7 8 9; do for photo in $(REAL_PHOTOS).tmp/digits-repo/Dataset/$$digit/*; do \
	  name=$$(basename "$$photo"); cp "$$photo" "$(REAL_PHOTOS).tmp/Sign-Language-Digits-Dataset/d$${digit}_$${name%.*}.jpg"; done; done
	$(BIN)/meshrec pseudo-label $(REAL_PHOTOS).tmp/HandsDataset --out $(REAL_PHOTOS).tmp/hands.jsonl
	$(BIN)/meshrec pseudo-label $(REAL_PHOTOS).tmp/Sign-Language-Digits-Dataset --out $(REAL_PHOTOS).tmp/digits.jsonl
	cat $(REAL_PHOTOS).tmp/hands.jsonl $(REAL_PHOTOS).tmp/digits.jsonl > $(REAL_PHOTOS).tmp/labels.jsonl
	rm -rf $(REAL_PHOTOS).tmp/hands-repo $(REAL_PHOTOS).tmp/digits-repo $(REAL_PHOTOS)
	mv $(REAL_PHOTOS).tmp $(REAL_PHOTOS)

# The fixed accuracy benchmark of the bundled model (renders data/bench, seed 2027, once).
bench-accuracy: setup
	$(BIN)/python benchmarks/bench_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache
