SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/passpush/v1/*.proto)
# The generated code is the passpush-client distribution's package (passpush.v1).
CLIENT := clients/python
STUBS := $(CLIENT)/src
# grpc_tools ships the well-known types (google/protobuf/*.proto).
WKT = $$($(BIN)/python -c 'import grpc_tools, os; print(os.path.join(grpc_tools.__path__[0], "_proto"))')

.PHONY: help run test lint style typecheck generate check-generated setup clean bench

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:.*## /\t/'

setup: $(VENV)/.installed $(BUF) ## Create .venv and install passpush with its dev tools.

# Both in one command: the server's passpush-client==<version> is then met by the local
# client, not looked up on an index. uv installs what pip would (the same versions) in 11 s
# where pip took 45 s on this machine, a sixth of a fresh clone's `make test`; compiled, as
# pip does, or each process would compile its imports again where PYTHONDONTWRITEBYTECODE is set.
UV_VERSION := 0.13.9
$(VENV)/.installed: pyproject.toml $(CLIENT)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e $(CLIENT) -e '.[dev]'
	touch $@

$(BUF): package.json
	npm install --no-package-lock --no-audit --no-fund --silent
	touch $@

run: setup ## Migrate, make a first API key if there is none, and start the server with local fakes.
	mkdir -p var
	$(BIN)/passpush migrate
	$(BIN)/passpush keys create --project demo --scopes all --name demo --if-none
	exec $(BIN)/passpush serve --fakes

generate: setup ## Regenerate the client package's stubs (clients/python/src/passpush/v1) from protos/.
	$(call protoc,$(STUBS))

# $(call protoc,OUTDIR): one shell line, so that recipes can chain it. Beside the code, the
# protos and their imports as a FileDescriptorSet with their comments (source info), which
# server reflection serves: the generated modules carry none.
protoc = rm -rf $(1)/passpush && mkdir -p $(1)/passpush/v1 && \
	$(BIN)/python -m grpc_tools.protoc -I protos -I third_party/googleapis -I $(WKT) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) \
	  --include_source_info --include_imports --descriptor_set_out=$(1)/passpush/v1/descriptors.binpb \
	  $(PROTOS) >/dev/null && \
	touch $(1)/passpush/v1/__init__.py $(1)/passpush/v1/py.typed

check-generated: setup ## Fail when the client package's stubs differ from what the protos generate.
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call protoc,$$tmp); \
	diff -r -x __pycache__ "$$tmp/passpush" $(STUBS)/passpush || { echo "$(STUBS)/passpush is stale: run 'make generate'"; exit 1; }

lint: style typecheck ## ruff, mypy, import layers, buf lint and buf format.

style: setup ## ruff and buf: lint and format.
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BUF) lint
	$(BUF) format --diff --exit-code

typecheck: setup ## mypy and the import layers.
	$(BIN)/mypy src
	$(BIN)/lint-imports

# Three processes on two cores: a third of the suite's time its tests wait (on subprocesses,
# PostgreSQL, paced fakes), and a third process fills it (358 s of pytest against 440 s with two,
# 347 s with four). The sources are compiled first: the tests start passpush processes
# often, and where PYTHONDONTWRITEBYTECODE is set each one compiled every module again.
#
# The type checks run beside the suite, their output shown after it: a cold mypy takes 15 s,
# which the suite's idle third absorbs. ruff, buf and the stubs' check still fail first.
test: style check-generated ## Lint, check generated code, and run the whole suite on SQLite and PostgreSQL.
	$(BIN)/python -m compileall -q src
	$(MAKE) typecheck > $(VENV)/typecheck.log 2>&1 & checking=$$!; \
	  suite=0; $(BIN)/python -m pytest -n 3 || suite=$$?; \
	  checked=0; wait $$checking || checked=$$?; \
	  cat $(VENV)/typecheck.log; \
	  [ $$checked -eq 0 ] || echo "make test: the type checks failed (above)"; \
	  [ $$suite -eq 0 ] && [ $$checked -eq 0 ]

bench: setup ## Run the benchmarks and print their table.
	$(BIN)/python -m benchmarks

clean: ## Remove the virtualenv, node_modules and local data.
	rm -rf $(VENV) node_modules var
