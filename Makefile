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

# The demo: per training seed a teacher, the full student (AMLPF-CLIP) and the CE-only student, then one table.
DEMO_SEEDS ?= 1 2 3
DEMO_OUT ?= outputs/demo
demo: install
	@echo "== AMLPF-CLIP demo on SYNTHETIC H&E-like images with tiny random-init models (no downloads) =="
	@set -e; for seed in $(DEMO_SEEDS); do \
		run=$(DEMO_OUT)/seed_$$seed; \
		echo "== training seed $$seed: teacher, student (AMLPF-CLIP), student without KD and resampling -> $$run"; \
		$(OFFLINE) $(PY) train_teacher.py --config configs/demo.yaml --seed $$seed --output_dir $$run/teacher; \
		$(OFFLINE) $(PY) distill_student.py --config configs/demo.yaml --seed $$seed --output_dir $$run/student \
			--teacher_model $$run/teacher; \
		$(OFFLINE) $(PY) distill_student.py --config configs/demo.yaml --seed $$seed --output_dir $$run/student-ce \
			--kd_weight 0 --resampling none --do_zero_shot false; \
	done
	$(OFFLINE) $(PY) predict.py --model $(DEMO_OUT)/seed_1/student --split_file $(DEMO_OUT)/seed_1/student/split.json \
		--output_dir $(DEMO_OUT)/predictions --max_overlays 16
	$(OFFLINE) $(PY) -m modeling_amlpf.report $(DEMO_OUT)

bench: install
	$(OFFLINE) $(PY) benchmarks/bench_data.py --json benchmarks/results/bench_data.json
	$(OFFLINE) $(PY) benchmarks/bench_train.py --json benchmarks/results/bench_train.json
	$(OFFLINE) $(PY) benchmarks/bench_infer.py --json benchmarks/results/bench_infer.json
	$(OFFLINE) $(PY) benchmarks/bench_wsinfer.py --json benchmarks/results/bench_wsinfer.json

presets: install
	$(OFFLINE) $(PY) -m modeling_amlpf.presets --output_dir configs/models

clean:
	rm -rf outputs .pytest_cache
