# marginbench developer and user commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch: any release in the pyproject range works; this one installs from the local wheel
# cache on our CI machines. Override with `make install TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TEST_ARGS ?=
# Fashion-MNIST (demo zoo, tests, bench): looked for where marginbench/data.py looks, see
# scripts/ensure_fashion_mnist.sh. The last two are for testing that script.
DATA_DIR ?= $(or $(MARGINBENCH_DATA_DIR),data)
FASHION_MNIST_DEBIAN ?= /usr/share/datasets/fashion-mnist
APT_GET ?= apt-get

.PHONY: help install data test test-all demo tables bench zoo lint clean-cache

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/marginbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<82" wheel
	$(BIN)/pip install -q $(TORCH_SPEC)
	# adv-lib pulls visdom, whose source build imports pkg_resources: build it with our setuptools<82
	$(BIN)/pip install -q --no-build-isolation visdom
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/marginbench  ## create .venv with marginbench and everything it needs

data:  ## Fashion-MNIST: install Debian's dataset-fashion-mnist if it is nowhere (root or sudo -n)
	@DATA_DIR="$(DATA_DIR)" FASHION_MNIST_DEBIAN="$(FASHION_MNIST_DEBIAN)" APT_GET="$(APT_GET)" bash scripts/ensure_fashion_mnist.sh

# pytest exits 5 when it collected no tests: a failure of the suite, said in words here
# (make exits 2 on any failing recipe, so whoever calls make never sees the 5)
NO_TESTS = { status=$$?; [ $$status != 5 ] || echo "pytest collected no tests: the suite failed" >&2; exit $$status; }

test: data install  ## run the default test suite (about 10 min on 2 CPU cores)
	$(BIN)/pytest -q $(TEST_ARGS) || $(NO_TESTS)

test-all: data install  ## run every test, the slow ones too (CI: .ci/run)
	$(BIN)/pytest -q -m "slow or not slow" $(TEST_ARGS) || $(NO_TESTS)

demo: data install  ## the whole method on the demo zoo (Fashion-MNIST, CPU, minutes): results/demo/
	$(BIN)/python scripts/demo.py

tables: install  ## rebuild Tables 1-4 and Figures 3-11 from cached runs (no model, no GPU)
	$(BIN)/marginbench tables

# Every L-inf estimator (ddn and alma minimise L2 only). BENCH_ARGS=--resume keeps the
# estimators a killed run already finished. On 2 CPU cores the ResNet-18 run takes > 1 h.
BENCH_ESTIMATORS ?= fab fab_polish fab_polish_multistart fab_topk fab_targeted fmn apgd_bisect
BENCH_ARGS ?=
# Against exact MILP margins (results/oracle, 240 samples; minutes): within 1 % of exact, mean
# and worst overshoot, share below exact. The closest-to-the-truth presets are cheap there.
ORACLE_ESTIMATORS ?= $(BENCH_ESTIMATORS) fab_polish_multistart_all fmn_polish_multistart fmn_polish_multistart_9 fmn_polish_multistart_all
bench: data install  ## margin estimators side by side (tightness vs fab and vs exact margins, cost): results/bench/
	$(BIN)/python scripts/bench_oracle.py --estimators $(ORACLE_ESTIMATORS)
	$(BIN)/python scripts/bench_margins.py --model aa_resnet18 --data ../shared/data/cifar10_test_first100.npz --n 100 --estimators $(BENCH_ESTIMATORS) $(BENCH_ARGS)
	$(BIN)/python scripts/bench_margins.py --model fm_madry --data fashion_mnist --n 200 --estimators $(BENCH_ESTIMATORS) $(BENCH_ARGS)

zoo: data install  ## retrain the Fashion-MNIST demo zoo (six models, CPU)
	$(BIN)/python scripts/train_zoo.py

lint: install  ## ruff
	$(BIN)/ruff check marginbench scripts tests

clean-cache:  ## delete cached artifacts (.cache/marginbench)
	rm -rf .cache/marginbench

bench-gpu: install  ## margin estimators on WRN-28-10 x 512 CIFAR-shaped inputs: samples/s, peak memory, 10k-row projection
	$(BIN)/python scripts/bench_gpu.py $(BENCH_GPU_ARGS)
