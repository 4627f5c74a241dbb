# Two set-up commands for a newcomer: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: venv demo test test-fast bench reliability lint images compose-up compose-down clean

$(BIN)/batchmesh: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,bench]"
	@touch $@

venv: $(BIN)/batchmesh

# checkov (the Kubernetes policy scan in the tests) pins networkx and packaging below what scikit-image needs:
# it gets a venv of its own, linked into ours, where the tests look for it.
$(BIN)/checkov: | $(BIN)/batchmesh
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install --quiet "checkov>=3.3,<4"
	ln -sf $(abspath $(VENV)-checkov/bin/checkov) $@

demo: venv
	$(BIN)/python examples/thumbnailer/generate.py examples/thumbnailer/data --count 6 --corrupt 1
	$(BIN)/batchmesh run examples/thumbnailer/pipeline.yaml --input examples/thumbnailer/data --out $(OUT)/thumbnailer; \
	  status=$$?; echo "thumbnails: $(OUT)/thumbnailer/thumbnails/   manifest: $(OUT)/thumbnailer/manifest.json"; \
	  [ $$status -le 1 ]  # 1 = some items dead-lettered (the demo's corrupt video, on purpose)

test: venv $(BIN)/checkov lint
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python -m bench

# The long fault-injection runs behind the README's Reliability table (the short ones are in `make test`).
reliability: venv
	$(BIN)/python -m bench.chaos --items 200000 --kills 20
	$(BIN)/python -m bench.chaos_compose --items 10000 --kills 20
	$(BIN)/python -m bench.poison --items 5000
	$(BIN)/python -m bench.redis_faults --items 400 --outage 30 --docker

lint: venv
	$(BIN)/ruff check services tests bench examples
	$(BIN)/hadolint services/Dockerfile services/workers/Dockerfile

# Containers: the images, then the book's image pipeline under Docker Compose (see README, "Containers").
# The mesh image and one worker image per extras set the committed compose files use
# (services/render/roles.py worker_image: batchmesh-worker:0.1.0-<extras>).
WORKER_EXTRAS ?= images video signup

images:
	docker build -f services/Dockerfile -t batchmesh:0.1.0 .
	for extras in $(WORKER_EXTRAS); do \
	  docker build -f services/workers/Dockerfile --build-arg EXTRAS=$$extras -t batchmesh-worker:0.1.0-$$extras . || exit 1; \
	done

compose-up:
	docker compose -f compose/docker-compose.yml up --build

compose-down:
	docker compose -f compose/docker-compose.yml down -v

clean:
	rm -rf $(VENV) $(VENV)-checkov .batchmesh $(OUT) examples/*/data .pytest_cache
