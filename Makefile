# The front door: `make help` lists every target.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install bytecode run run-prod test lint format migrate keys-rotate client bench soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

# Where PYTHONDONTWRITEBYTECODE is set (our machines, the image) nothing caches the package's
# bytecode, so every worker would compile its source again at each start: about 0.1-0.3 s and
# 2 MB of resident memory per worker. compileall skips files whose bytecode is up to date.
bytecode: $(STAMP) ## Compile the package's bytecode (done by run-prod, bench and soak)
	$(BIN)/python -m compileall -q oidc_server

run: $(STAMP) ## Serve on http://127.0.0.1:8000 (embedded: SQLite, in-process stores)
	$(BIN)/oidc-server db upgrade
	$(BIN)/oidc-server serve

# APP_ENV defaults to production here: it refuses to start without SECRET_KEY, REDIS_URL and a
# PostgreSQL DATABASE_URL. oidc_server/serve.py reads HOST, PORT, WEB_CONCURRENCY, WEB_THREADS
# and WEB_TIMEOUT.
run-prod: bytecode ## Migrate, then serve under granian (needs DATABASE_URL, REDIS_URL, SECRET_KEY)
	APP_ENV=$${APP_ENV:-production} $(BIN)/oidc-server db upgrade
	APP_ENV=$${APP_ENV:-production} exec $(BIN)/python -m oidc_server.serve

test: $(STAMP) ## Run the whole test suite (PostgreSQL/Redis when TEST_DATABASE_URL/TEST_REDIS_URL are set)
	@command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM_PATH" ] || { \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/pytest

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: $(STAMP) ## Apply database migrations (DATABASE_URL) and create the first-party client
	$(BIN)/oidc-server db upgrade

keys-rotate: $(STAMP) ## Make a new current signing key
	$(BIN)/oidc-server keys rotate

client: $(STAMP) ## Create a machine client for the roles API: make client NAME=billing
	$(BIN)/oidc-server clients create --name "$(or $(NAME),machine-client)" \
		--grant-type client_credentials --scope "roles:read roles:write" --json

bench: bytecode ## Production-mode benchmark of every scenario (bench-results/bench.json); GROWTH=1 for 1M users, PARTITIONED=1 for a partitioned history
	$(BIN)/python scripts/bench.py $(if $(GROWTH),--growth) $(if $(PARTITIONED),--partitioned) $(if $(SECONDS_PER_RUN),--seconds $(SECONDS_PER_RUN))

soak: bytecode ## 180 s mixed traffic in production mode: RSS, 5xx, Redis keys (bench-results/soak.json)
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

clean: ## Remove the virtualenv and caches (keeps instance/ and keys/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
