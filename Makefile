# Two commands on a fresh machine: `make run` and `make test`. Everything else is what they stand on.
# Each setup step is a file target, so a second run only redoes what changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NPM    ?= npm
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEMO   ?= 1
CHROMIUM := /usr/bin/chromium
FRONTEND_SOURCES := $(shell find frontend/src frontend/lib/src frontend/lib/package.json frontend/public frontend/index.html frontend/vite.config.ts frontend/tsconfig*.json -type f 2>/dev/null)

# bench/audit.py chain: the last commit before the audit chain, the first with it, and this tree.
AUDIT_SIDES ?= without=2ccc651,chain=8ef3d25,now=.
# bench/retention.py: the last commit with a flat events table, and this tree (partitioned).
RETENTION_SIDES ?= flat=e7bf7a8,partitioned=.

.PHONY: run test test-python test-frontend check setup clean help bench lock nats-server

help:
	@echo "make run    set up everything and start Herald with its dashboard on an embedded PostgreSQL"
	@echo "            (with a live demo stream; DEMO=0 to start empty)"
	@echo "make test   set up everything and run every test and check"
	@echo "make lock   re-pin requirements.lock after a dependency changes in pyproject.toml"
	@echo "make bench  every benchmark beside the peers, then docs/benchmarks.md (about 60 min;"
	@echo "            BENCH_MINUTES=10 sets the soak and the sustained-RSS run, BENCH_DATABASE_URL an external server)"

run: setup frontend/dist/index.html
	$(PY) -m service serve --host $(HOST) --port $(PORT) --print-url $(if $(filter 0,$(DEMO)),,--demo --no-access-log)

test: setup test-python test-frontend

setup: $(VENV)/.installed frontend/node_modules/.installed

# Exactly the versions in requirements.lock (every extra: dev, bench, embedded), then Herald itself,
# editable, without letting pip pick anything else.
$(VENV)/.installed: pyproject.toml requirements.lock clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip install --quiet --no-deps -e clients/python  # herald_client, the Python client (its own distribution; httpx and websockets are in the lock)
	@touch $@

# After changing a dependency in pyproject.toml: pin the newest versions that fit, for Python 3.11.
# Pins already in the lock are kept when they still fit (add --upgrade to move them all).
lock: $(VENV)/.installed
	$(PY) -m piptools compile --quiet --strip-extras --extra dev --extra bench --extra embedded --extra nats \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

frontend/node_modules/.installed: frontend/package.json frontend/lib/package.json frontend/package-lock.json
	cd frontend && $(NPM) ci --no-audit --no-fund
	@touch $@

# Test data from npm (GitHub's example webhook payloads), installed for the tests, never copied in.
tests/fixtures/node_modules/.installed: tests/fixtures/package.json tests/fixtures/package-lock.json
	cd tests/fixtures && $(NPM) ci --no-audit --no-fund
	@touch $@

# The bench's light load client (Node `ws`); its smoke runs inside `make test`.
bench/client/node_modules/.installed: bench/client/package.json bench/client/package-lock.json
	cd bench/client && $(NPM) ci --no-audit --no-fund
	@touch $@

frontend/dist/index.html: frontend/node_modules/.installed $(FRONTEND_SOURCES)
	cd frontend && $(NPM) run build

# The built dashboard first: tests/test_packaging.py builds the wheel, which carries it.
test-python: $(VENV)/.installed frontend/dist/index.html tests/fixtures/node_modules/.installed bench/client/node_modules/.installed nats-server
	$(PY) -m ruff check service tests migrations bench clients
	$(PY) -m mypy
	$(PY) -m pytest

# The frontend's tests run the real service (integration) and its schema (generated types): the venv too.
# The browser tests (e2e) drive Debian's chromium against the service serving the built dashboard.
test-frontend: frontend/node_modules/.installed $(VENV)/.installed frontend/dist/index.html $(CHROMIUM)
	cd frontend && $(NPM) run typecheck && $(NPM) run lint && $(NPM) test && HERALD_CHROMIUM=$(CHROMIUM) $(NPM) run test:e2e

# Debian's chromium for the e2e tests (Playwright's browser downloads do not work on these machines).
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "$(CHROMIUM) is missing and installing it needs root: apt-get update && apt-get install -y chromium" >&2; \
		exit 1; \
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

# Debian's nats-server for the wake-up bus tests (tests/test_bus.py starts its own on a free port). Without it,
# and without root to install it, those tests are skipped, saying so: the bus is proven against a real server only.
nats-server:
	@if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server; \
		else \
			echo "nats-server is missing and installing it needs root (apt-get install -y nats-server): the bus tests will be skipped" >&2; \
		fi; \
	fi

# Outside `make test`: minutes of full load. Results in bench/results/, rendered into docs/benchmarks.md.
BENCH_MINUTES ?= 10
bench: setup bench/client/node_modules/.installed
	$(PY) bench/fanout.py latency --client-processes 2
	$(PY) bench/fanout.py burst
	$(PY) bench/publish.py
	$(PY) bench/catchup.py
	$(PY) bench/memory.py idle
	$(PY) bench/ws_implementations.py
	$(PY) bench/memory.py sustained --minutes $(BENCH_MINUTES)
	$(PY) bench/soak.py --minutes $(BENCH_MINUTES)
	$(PY) bench/audit.py chain --sides $(AUDIT_SIDES)
	$(PY) bench/audit.py read
	$(PY) bench/audit_queries.py
	$(PY) bench/retention.py --sides $(RETENTION_SIDES)
	$(PY) bench/scale.py
	$(PY) bench/heads.py
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist frontend/lib/dist tests/fixtures/node_modules bench/client/node_modules
