# randsae: the two commands of the README, plus a few conveniences.
# Works on a machine with only Python 3.11, pip and make: everything else goes into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# torch first, pinned: 2.13.0 is a CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
# nbdev-test's default skip ('^[_.]') plus the experiment notebooks that read another stage's folder (sae_dir): with 2 workers
# nothing orders them after sae_pipeline.ipynb, so they run only as stages (tests/test_baselines.py, test_recovery_stage.py check them)
NBTEST_SKIP := ^([_.]|baselines\.|robustness_sweep\.|ablation\.)

.PHONY: reproduce test lab readme docs bench export clean-venv chromium

reproduce: $(VENV)/.installed-base  ## the main job on the embedded offline default
	$(BIN)/randsae reproduce --preset tiny

test: $(VENV)/.installed-dev chromium  ## nbdev-test on every notebook, then pytest (its summary line is the last word)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/nbdev-test --n-workers 2 --timing --skip-file-re '$(NBTEST_SKIP)'
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile

lab: $(VENV)/.installed-dev  ## JupyterLab on nbs/ with the project's environment as a kernel
	$(BIN)/python -m ipykernel install --user --name randsae --display-name "randsae (.venv)"
	$(BIN)/jupyter lab --notebook-dir=nbs

readme: $(VENV)/.installed-dev  ## README.md from nbs/index.ipynb
	$(BIN)/python -c "from randsae.docs import write_readme; write_readme()"

docs: $(VENV)/.installed-dev  ## the docs site in _site/ (README, module notebooks, figures and executed notebooks of outputs/)
	$(BIN)/python -c "from randsae.docs import build_site; print(build_site())"

export: $(VENV)/.installed-dev  ## notebooks -> randsae/, then README
	$(BIN)/nbdev-export
	$(MAKE) readme

bench: $(VENV)/.installed-base  ## every benchmark: ratios measured within one run each
	$(BIN)/randsae bench toy
	$(BIN)/randsae bench sae
	$(BIN)/randsae bench autointerp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-base
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $@

clean-venv:
	rm -rf $(VENV)

# The browser test of the docs site (tests/test_site.py) drives Debian's chromium: installed here when missing and we are root
# (CI: a fresh machine as root; about 2.5 min with apt-get update); otherwise the test fails saying how to install it.
chromium:  ## Debian's chromium for the docs site's browser test, when missing
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	elif [ ! -x /usr/bin/chromium ]; then echo "chromium is missing: install Debian's chromium (sudo apt-get install -y chromium) or tests/test_site.py fails"; fi
