# labcloud: `make run` serves the portal, `make test` runs every check.
# Both set up this machine first (scripts/bootstrap.sh, idempotent and quick on a re-run).
#
#   make run                   bootstrap, then serve on $LABCLOUD_HOST:$LABCLOUD_PORT (127.0.0.1:8000)
#   make test                  bootstrap --test, then scripts/test.sh (ruff, migrations, pytest on SQLite + PostgreSQL)
#   make test ARGS="-k vms -x" extra arguments for pytest
#   make bootstrap             set up without serving
#   make bootstrap-test        set up for tests without running them

SHELL := /bin/bash
ARGS ?=

.PHONY: run test bootstrap bootstrap-test

run: bootstrap
	exec .venv/bin/python manage.py serve

test: bootstrap-test
	bash scripts/test.sh $(ARGS)

bootstrap:
	bash scripts/bootstrap.sh

bootstrap-test:
	bash scripts/bootstrap.sh --test
