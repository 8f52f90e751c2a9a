#!/usr/bin/env bash
# Installs what the demo needs, then runs `systerns demo` (local broker, model
# server, worker, real commands, the renamed real miner, real captures).
# Extra arguments go to `systerns demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
exec python3 -m systerns demo "$@"
