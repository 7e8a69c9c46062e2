# Two commands: `make run` (embedded gateway at http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# make test talks to real services; these are the defaults on a developer machine and in CI.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
PYTEST_ARGS ?=

.PHONY: run test test-embedded lint format install install-dev services nodes browser fuzz wrk promtool bench chaos clean gettext makemessages compilemessages

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py bootstrap_demo --url http://$(HOST):$(PORT)
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

services: $(VENV)/.installed-dev
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) scripts/check_services.py

# Chain nodes for the watcher tests: Debian litecoind, npm anvil and solc (scripts/install_nodes.sh).
nodes:
	bash scripts/install_nodes.sh

# Debian chromium for the checkout page's end-to-end tests (scripts/install_debian_tool.sh).
browser:
	bash scripts/install_debian_tool.sh chromium /usr/bin/chromium

# Debian wrk, the HTTP load generator of bench/api_throughput.py (scripts/install_debian_tool.sh).
wrk:
	bash scripts/install_debian_tool.sh wrk /usr/bin/wrk

# The checkout page's translations (payments/locale/<lang>/LC_MESSAGES/django.po, compiled .mo
# shipped too): makemessages refreshes the .po files from the code, compilemessages builds the .mo.
CHECKOUT_LANGUAGES ?= de es
gettext:
	bash scripts/install_debian_tool.sh gettext /usr/bin/msgfmt

makemessages: $(VENV)/.installed gettext
	cd payments && ../$(PY) ../manage.py makemessages --no-obsolete --no-location $(addprefix -l ,$(CHECKOUT_LANGUAGES))

compilemessages: $(VENV)/.installed gettext
	cd payments && ../$(PY) ../manage.py compilemessages $(addprefix -l ,$(CHECKOUT_LANGUAGES))
# Debian prometheus for its promtool, which checks deploy/prometheus/alerts.yml in the tests.
promtool:
	bash scripts/install_debian_tool.sh prometheus /usr/bin/promtool

# mypy's Django plugin loads the settings: in embedded mode, whatever services the caller's shell
# names (with DATABASE_URL set and DEBUG off they would ask for a SECRET_KEY).
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL= REDIS_URL= $(VENV)/bin/mypy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: services nodes browser wrk promtool lint
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-embedded

# Money, amounts and the state machine again in embedded mode (a SQLite file, no Redis): crypto
# amounts must be exact there too, and SQLite has no exact wide number type.
EMBEDDED_TESTS ?= tests/payments/test_money.py tests/payments/test_base_units_exact.py \
	tests/payments/test_state_machine.py tests/payments/test_payment_flow.py \
	tests/payments/test_api_payments.py tests/payments/test_api_amount_strings.py \
	tests/payments/test_checkout.py tests/payments/test_api_payment_options.py \
	tests/payments/test_api_payment_representation.py tests/cryptopay/test_compiled_query.py
test-embedded: $(VENV)/.installed-dev
	DATABASE_URL= REDIS_URL= $(PY) -m pytest $(EMBEDDED_TESTS)

# Schemathesis over every API operation and hypothesis over the key parsers, FUZZ_EXAMPLES each
# (make test runs the same tests with 5 per operation and 100 per property).
FUZZ_EXAMPLES ?= 200
fuzz: services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(PY) -m pytest tests/fuzz $(PYTEST_ARGS)

# The chaos scenario (chaos/scenario.py): load, payments on chain, listeners, while Redis, a daphne,
# litecoind, the rate providers and database connections fail. CHAOS_QUICK=1: the make test version.
CHAOS_QUICK ?=
chaos: services nodes
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(PY) -m chaos $(if $(filter 1 yes true,$(CHAOS_QUICK)),--quick)

# Every bench script, one after the other; figures and ratios to their baselines in
# bench/RESULTS.md (bench/report.py). BENCH_QUICK=1: smoke sizes, as make test runs them.
BENCH_QUICK ?=
bench: services nodes wrk
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(PY) -m bench.report $(if $(filter 1 yes true,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) .local staticfiles .pytest_cache .ruff_cache .hypothesis
