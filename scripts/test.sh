#!/usr/bin/env bash
# Installs what the tests need, starts the local broker, runs the whole suite
# (unit, integration against the real broker, end to end), stops the broker.
# Extra arguments go to pytest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh || exit 1
# The checkout's own venv (scripts/install.sh): python3 and systerns below,
# and every server the tests start with sys.executable, run this tree's code.
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"

started=0
if ! scripts/kafka.sh status; then
  scripts/kafka.sh start || exit 1
  started=1
fi
export SYSTERNS_REQUIRE_BROKER=1
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
[[ $started -eq 1 ]] && scripts/kafka.sh stop
# pytest exits 5 when it collected no test: that is a failure of this script.
if [[ $rc -eq 5 ]]; then echo "test event=no_tests_collected" >&2; exit 1; fi
exit $rc
