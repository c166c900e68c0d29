# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo bench-codec lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# mosquitto (MQTT broker) and stunnel4 are real peers in the tests; install them if missing.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null)

lint: $(STAMP)
	$(PY) -m ruff check fixproxy tests bench

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q

# End to end on the embedded default: dev CA, real QuickFIX ATS + OMS, fixproxy with mutual TLS.
demo: $(STAMP)
	$(PY) -m fixproxy.demo --workdir demo-run

bench-codec: $(STAMP)
	$(PY) bench/bench_codec.py
	$(PY) bench/bench_inspector.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
