#!/usr/bin/env bash
# One command on a fresh Debian machine (as root): install, then bring up the lab region.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
# Idempotent: a region of the same shape already up is left as it is.
exec .venv/bin/yunhan up --detach "$@"
