# Every target bootstraps what is missing first (Debian packages when root, .venv, the project).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo test sim bench bench-checker bench-nemesis bench-routing lint clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@$(PY) scripts/demo.py

test: bootstrap
	@$(PY) -m pytest -q -n 2 --dist loadgroup

bench:
	@EXTRA_DEB_PACKAGES="etcd-server" scripts/bootstrap
	@$(PY) scripts/bench.py $(BENCH_ARGS)

bench-checker: bootstrap
	@$(PY) scripts/bench_checker.py $(BENCH_ARGS)

bench-nemesis: bootstrap
	@$(PY) scripts/bench_nemesis.py $(BENCH_ARGS)

bench-routing: bootstrap
	@$(PY) scripts/bench_routing.py $(BENCH_ARGS)

sim: bootstrap
	@$(PY) -m dynacheck sim --seeds $(or $(SEEDS),300) --time-limit $(or $(SIM_SECONDS),10) --store .dynamo/sim-store

lint: bootstrap
	@$(VENV)/bin/ruff check daemon ops checker tests scripts

clean:
	rm -rf $(VENV) .dynamo build *.egg-info
