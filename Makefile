# dealseg: `make demo` and `make test` work on a fresh machine (they create .venv and install).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dealseg-installed
DEMO := demo

.PHONY: install test demo lint bench gpu-check clean install-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,export,serve,ray,dev,trt,logs]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The main job on the embedded engine and the shipped model: a pool of fresh street scenes (a seed
# the shipped model never saw) plus real photos, scored and ranked by the default strategy (chosen
# by measurement: README, Which strategy), one frame a drive
# (--diverse), with difficulty maps and the report (its link ends the output). The photos are
# off-domain: named in the report, never picked (README, Off-domain frames).
demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/deal-train synth --out $(DEMO)/streets --n 60 --size 360x480 --seed 7 >/dev/null
	mkdir -p $(DEMO)/pool/photos && cp -r $(DEMO)/streets/train $(DEMO)/pool/streets
	$(PY) -c "import shutil, pathlib, skimage; d = pathlib.Path(skimage.__file__).parent / 'data'; \
	  [shutil.copy(d / n, '$(DEMO)/pool/photos/') for n in \
	   ('astronaut.png', 'coffee.png', 'chelsea.png', 'motorcycle_left.png', 'rocket.jpg')]"
	$(VENV)/bin/deal-client score $(DEMO)/pool --top-k 8 --diverse 0.95 --out $(DEMO)/out \
	  --report
	@echo "outputs: $(DEMO)/out/ (scores.jsonl, embeddings.f32, selection.txt, selection.json, maps/, report.html)"
	@echo "report: file://$(abspath $(DEMO))/out/report.html"

# Benchmarks (bench/): each prints a short table and writes bench/results/<name>.md with
# the date and the machine. `make bench BENCH_FLAGS=--quick` for a smoke run (a few minutes).
BENCH := engine pipeline wire pam selection quantize peers frames fleet logs
BENCH_FLAGS ?=
bench: $(STAMP)
	set -e; for b in $(BENCH); do $(PY) bench/$$b.py $(BENCH_FLAGS); done

# The GPU figures in one command on a CUDA host (bench/gpu.py, under 8 minutes): training in
# fp32 and mixed precision, scoring with eager CUDA, ONNX Runtime's CUDA provider and TensorRT
# where installed (pip install -e '.[gpu]' first); bench/results/gpu.md. A CPU host: one line.
gpu-check: $(STAMP)
	$(PY) bench/gpu.py

# `pip install .` (not editable, with its dependencies) into a fresh venv outside the checkout,
# then `deal-client score` on a folder with the shipped model: what `pip install dealseg` gives.
CHECK := /tmp/dealseg-install-check
install-check:
	rm -rf $(CHECK) && python3 -m venv $(CHECK)/venv
	$(CHECK)/venv/bin/pip install -q .
	rm -rf build
	mkdir $(CHECK)/pool && cd / && $(CHECK)/venv/bin/python -c "import numpy as np, PIL.Image as I; \
	  from dealseg.training.streets.render import render_scene as r; \
	  [I.fromarray(r(np.random.default_rng(i))[0]).save(f'$(CHECK)/pool/{i}.png') for i in range(3)]"
	cd / && $(CHECK)/venv/bin/deal-client score $(CHECK)/pool -k 2 --out $(CHECK)/out --no-progress

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DEMO) deal-out .pytest_cache
