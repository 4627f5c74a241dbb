# Two set-up commands for a newcomer: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: venv demo test test-fast bench lint clean

$(BIN)/batchmesh: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,bench]"
	@touch $@

venv: $(BIN)/batchmesh

demo: venv
	$(BIN)/python examples/thumbnailer/generate.py examples/thumbnailer/data --count 6 --corrupt 1
	$(BIN)/batchmesh run examples/thumbnailer/pipeline.yaml --input examples/thumbnailer/data --out $(OUT)/thumbnailer; \
	  status=$$?; echo "thumbnails: $(OUT)/thumbnailer/thumbnails/   manifest: $(OUT)/thumbnailer/manifest.json"; \
	  [ $$status -le 1 ]  # 1 = some items dead-lettered (the demo's corrupt video, on purpose)

test: venv
	$(BIN)/ruff check services tests bench examples
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check services tests bench examples

clean:
	rm -rf $(VENV) .batchmesh $(OUT) examples/*/data .pytest_cache
