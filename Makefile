# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo bench-codec lint system-deps clean

# setup.py and fixproxy/_speedups.c: the optional C accelerator, compiled by the editable install.
$(STAMP): pyproject.toml setup.py fixproxy/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Real peers the tests start: mosquitto (MQTT broker); promtool (Debian's prometheus package) checks
# the alert rules and dashboard queries in deploy/; OpenSSL's headers (libssl-dev) for the C
# accelerator's audit rows (the suite checks it is built); haproxy, the benchmark's C floor (its
# smoke test runs it). Installed from Debian when missing.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	[ -f /usr/include/openssl/sha.h ] || missing="$$missing libssl-dev"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check fixproxy tests bench

# sslyze (tests/test_tls_posture.py) pins its own cryptography range: it gets its own venv.
SSLYZE_VENV ?= .venv-sslyze
.PHONY: sslyze-venv
sslyze-venv: $(SSLYZE_VENV)/.installed-stamp
$(SSLYZE_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip install -q 'sslyze>=6'
	touch $@
test: sslyze-venv

test: system-deps $(STAMP) lint
	$(PY) -m pytest -q

# End to end on the embedded default: dev CA, real QuickFIX ATS + OMS, fixproxy with mutual TLS.
demo: $(STAMP)
	$(PY) -m fixproxy.demo --workdir demo-run

bench-codec: $(STAMP)
	$(PY) bench/bench_codec.py
	$(PY) bench/bench_inspector.py

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) .pytest_cache .ruff_cache .hypothesis

# Latency benchmark (bench/run_bench.py, bench/README.md): direct / relay / fixproxy, plain and TLS.
# bench: 1k, 10k, 50k msg/s and saturation, 1,000 idle sessions, a profile (a few minutes).
# bench-ci: 10k msg/s and a short saturation; fails only on a lost message or a component error.
.PHONY: bench bench-ci
bench: $(STAMP)
	$(PY) bench/run_bench.py --preset full

bench-ci: $(STAMP)
	$(PY) bench/run_bench.py --preset ci

# Legitimate latency under floods, each attacker in its own process (bench/floods.py, about a minute).
.PHONY: bench-floods
bench-floods: $(STAMP)
	$(PY) bench/floods.py

# Fuzz the FIX decoder with atheris (libFuzzer) for FUZZ_SECONDS, from the seed corpus in
# tests/data/fuzz; new inputs go to $(VENV)/fuzz-corpus, crashing inputs to .fuzz-crashes/.
# Uses the venv (VENV=/path to pick another); atheris is installed into it when missing.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: $(STAMP)
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q atheris
	mkdir -p $(VENV)/fuzz-corpus .fuzz-crashes
	$(PY) tests/fuzz_decoder.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=.fuzz-crashes/ \
	  $(VENV)/fuzz-corpus tests/data/fuzz

# The longer run of the hardening suites: SOAK_ROUNDS passes of the fault, flood and adversarial
# tests (each pass must be green), then SOAK_FUZZ_SECONDS of decoder fuzzing.
SOAK_ROUNDS ?= 5
SOAK_FUZZ_SECONDS ?= 600
.PHONY: soak
soak: $(STAMP) system-deps
	@for i in $$(seq 1 $(SOAK_ROUNDS)); do \
	  echo "soak round $$i/$(SOAK_ROUNDS)"; \
	  $(PY) -m pytest -q tests/test_faults.py tests/test_floods.py tests/test_adversarial.py tests/test_session_sockets.py \
	    tests/test_proxy_e2e.py tests/test_proxy_refusals.py || exit 1; \
	done
	$(MAKE) fuzz FUZZ_SECONDS=$(SOAK_FUZZ_SECONDS)
