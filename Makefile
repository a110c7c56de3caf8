# `make quickstart` and `make test` set everything up themselves: .venv/, the packages, Fashion-MNIST.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test ui benchmark
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/pipeline run experiments/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

ui: $(STAMP)
	$(VENV)/bin/pipeline ui

benchmark: $(STAMP)
	$(VENV)/bin/pipeline benchmark train
