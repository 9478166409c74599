#!/usr/bin/env bash
# Runs the whole test suite (unit, integration, e2e) as root. Installs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
.venv/bin/ruff check yunhan tests bench
.venv/bin/ruff format --check -q yunhan tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
