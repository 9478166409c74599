#!/usr/bin/env bash
# Runs the whole test suite (unit, integration, e2e) as root. Installs first.
# The unit tests run on two processes (pytest-xdist, each test file kept on one process,
# as some files share a region between their tests); integration, e2e, chaos and API tests
# run one at a time, as they build namespaces, regions and load that would otherwise
# compete. Arguments go to one pytest run over what they name instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
.venv/bin/ruff check yunhan tests bench
.venv/bin/ruff format --check -q yunhan tests bench
.venv/bin/mypy
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" "$@"
fi
rc=0  # both runs, whatever the first says; the suite fails if either does
"${pytest[@]}" -n 2 --dist loadfile tests/unit || rc=$?
"${pytest[@]}" --ignore=tests/unit tests || rc=$?
exit "$rc"
