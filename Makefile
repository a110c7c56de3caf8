# `make quickstart` and `make test` set everything up themselves: .venv/, the packages, Fashion-MNIST.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-all ui benchmark
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/pipeline run experiments/quickstart.yaml

# The suite CI runs; test-all adds the slow tests (a second two-node cluster, the team server's PostgreSQL run,
# the infra scripts' servers) and the fault-injection suite's whole table.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow" --durations=12

test-all: $(STAMP)
	PIPELINE_FAULTS=all INFRA_E2E=1 $(VENV)/bin/python -m pytest -q

ui: $(STAMP)
	$(VENV)/bin/pipeline ui

benchmark: $(STAMP)
	$(VENV)/bin/pipeline benchmark train
