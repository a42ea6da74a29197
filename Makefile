# amlpf: `make demo` and `make test` set everything up from a fresh clone (a .venv with the pinned torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amlpf-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install test demo bench presets clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU machines: these two lie on local disk; PyPI's torchvision does not import beside the CPU torch wheel.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(OFFLINE) $(PY) -m pytest -q tests

# transformers' own common model/config/processor tests, from the installed version's source distribution
# (fetched once into .cache/; needs PyPI). `make test` never needs them.
UPSTREAM_CACHE ?= .cache/transformers-src
.PHONY: test-upstream
test-upstream: install
	AMLPF_UPSTREAM_TESTS="$$($(PY) tests/upstream/fetch_transformers_tests.py $(UPSTREAM_CACHE))" && \
	$(OFFLINE) AMLPF_UPSTREAM_TESTS="$$AMLPF_UPSTREAM_TESTS" $(PY) -m pytest -q -rs -p no:cacheprovider \
		tests/upstream/common_amlpf.py

demo: install
	@echo "== AMLPF-CLIP demo on SYNTHETIC H&E-like images with tiny random-init models (no downloads) =="
	$(OFFLINE) $(PY) train_teacher.py --config configs/demo.yaml
	$(OFFLINE) $(PY) distill_student.py --config configs/demo.yaml
	$(OFFLINE) $(PY) -m modeling_amlpf.report outputs/demo
	$(OFFLINE) $(PY) predict.py --model outputs/demo/student --split_file outputs/demo/student/split.json --output_dir outputs/demo/predictions --max_overlays 16

bench: install
	$(OFFLINE) $(PY) benchmarks/bench_data.py --json benchmarks/results/bench_data.json
	$(OFFLINE) $(PY) benchmarks/bench_train.py --json benchmarks/results/bench_train.json
	$(OFFLINE) $(PY) benchmarks/bench_infer.py --json benchmarks/results/bench_infer.json
	$(OFFLINE) $(PY) benchmarks/bench_wsinfer.py --json benchmarks/results/bench_wsinfer.json

presets: install
	$(OFFLINE) $(PY) -m modeling_amlpf.presets --output_dir configs/models

clean:
	rm -rf outputs .pytest_cache
