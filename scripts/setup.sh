#!/usr/bin/env bash
# One command on a fresh Debian machine (as root): install, then bring up the lab region.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec yunhan up --detach "$@"
