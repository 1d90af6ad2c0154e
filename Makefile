# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench soak clean readme-options

$(VENV)/.installed: pyproject.toml scripts/bootstrap
	./scripts/bootstrap

demo: $(VENV)/.installed
	$(PY) -m fakegoogle.demo

# Two workers, one test file each at a time: most tests wait on sockets and processes.
test: $(VENV)/.installed lint
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(VENV)/.installed
	$(PY) -m ruff check addons proxy fakegoogle examples tests benchmarks
	$(PY) -m mypy addons proxy examples

bench: $(VENV)/.installed
	$(PY) -m benchmarks

soak: $(VENV)/.installed
	$(PY) -m benchmarks.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Regenerate the README's option table from addons/options.py (tests/test_options.py checks it).
readme-options: $(VENV)/.installed
	$(PY) -m proxy.options_doc README.md
