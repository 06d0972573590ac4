# asrcompress: the two commands of the README.
#   make repro   - set up everything (venv, CPU torch, packages, speech synthesiser) and run `dvc repro`
#   make test    - set up everything and run ruff + pytest (+ the smoke reproduction and the
#                  regression check when CI=true)
# Both are idempotent: set-up is skipped when requirements have not changed.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
# The same environment is set by `import asrcompress` (src/asrcompress/__init__.py, RUN_ENV), so a
# plain `dvc repro` / `dvc exp run` computes the same; keep the two in step (tests/test_env_defaults.py).
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
# The same float results on any x86-64 CPU with AVX2: ATen, MKL and oneDNN otherwise choose their
# kernels by CPU (AVX-512 here, maybe not on the CI machine), and a from-scratch training run that
# differs in the last bit at step 1 ends elsewhere. Measured on this machine: the same step time,
# a different loss in the 7th digit. Override on the command line to use every kernel.
export ATEN_CPU_CAPABILITY ?= avx2
export MKL_CBWR ?= AVX2
export ONEDNN_MAX_CPU_ISA ?= AVX2
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup repro real test lint profile bench clean-venv ci-repro accept-metrics

setup: $(STAMP)

$(STAMP): requirements.txt requirements-real.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-real.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The real track's recordings are read from ../shared/realspeech (never copied into the repository).
# Without them `make repro` runs every other stage and says what it left out.
REALSPEECH ?= ../shared/realspeech
REAL_SPEECH_STAGES := ^(prepare_real|measure_real)@

repro: setup
	@if [ -d "$(REALSPEECH)" ]; then $(VENV)/bin/dvc repro; else \
	  echo "make repro: $(REALSPEECH) is missing: the real-speech stages (prepare_real@*, measure_real@*) are left out;"; \
	  echo "  put the realspeech folder there (README, 'The real track') or point real_corpora.<key>.dir at your own recordings."; \
	  $(VENV)/bin/dvc repro $$($(VENV)/bin/dvc stage list --name-only | grep -Ev '$(REAL_SPEECH_STAGES)'); fi
	$(VENV)/bin/dvc metrics show

# The papers on the real Whisper base (pipelines/p{1,2,3,4}_real, paper 1 in English: pipelines/p1_en) and the
# leaderboard (pipelines/leaderboard):
# one command, not part of `make repro` or CI
# (several CPU hours on 2 cores; README, "The papers on the real Whisper base"). DVC builds what they need
# first (the converted checkpoint, the real corpora, the dense references) and skips what is up to date.
REAL_PIPELINES := pipelines/p1_real/dvc.yaml pipelines/p2_real/dvc.yaml pipelines/p3_real/dvc.yaml \
	pipelines/p4_real/dvc.yaml pipelines/p1_en/dvc.yaml pipelines/leaderboard/dvc.yaml

real: setup
	@test -d "$(REALSPEECH)" || { echo "make real: $(REALSPEECH) is missing: the papers on the real Whisper base need the"; \
	  echo "  real recordings (README, 'The real track')"; exit 1; }
	$(VENV)/bin/dvc repro $(REAL_PIPELINES)
	@echo "make real: tables reports/real/p{1,2,3}/table.md, reports/leaderboard.md, figures reports/figures/real_p*, leaderboard_*"

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q
	@if [ "$$CI" = "true" ]; then $(MAKE) --no-print-directory ci-repro; fi

# CI: smoke reproduction from scratch, then the regression check against committed metrics.
# Every stage forced, each once, in DVC's dependency order (a plain `dvc repro` would skip the
# measurement stages: deterministic training recreates the committed models bit for bit); the
# foundation and the whole run are timed and printed after the regression table (report/ci_repro.py).
ci-repro: setup
	$(PY) -m asrcompress.report.ci_repro

# Accept the reproduced figures as the new committed reference for the regression check.
accept-metrics: setup
	$(VENV)/bin/dvc repro
	git add dvc.lock reports/
	git commit -m "Update reproduced metrics"

# Switch profile: make profile PROFILE=paper  (or PROFILE=smoke)
profile: setup
	$(PY) -m asrcompress.config use $(PROFILE)

bench: setup
	$(PY) benchmarks/bench_surgery.py
	$(PY) benchmarks/bench_flops_vs_latency.py

clean-venv:
	rm -rf $(VENV)
