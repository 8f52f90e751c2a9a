#!/usr/bin/env bash
# Installs everything Systerns needs on a fresh Debian machine (idempotent):
# Debian's sysdig and strace, the Python package with its test and evaluation
# extras in the checkout's .venv, tensorflow-serving-api without its
# dependencies, and Kafka's jars.
#
# tensorflow-serving-api's metadata requires the full `tensorflow` wheel; we run
# on `tensorflow-cpu` instead (same modules, no GPU libraries, half the size),
# so the API wheel is installed with --no-deps: its generated protos only import
# tensorflow.core.framework, which tensorflow-cpu provides.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'install event=%s %s\n' "$1" "${*:2}" >&2; }

need_apt=()
command -v sysdig > /dev/null || need_apt+=(sysdig)
command -v strace > /dev/null || need_apt+=(strace)
command -v unshare > /dev/null || need_apt+=(util-linux)
command -v java > /dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn > /dev/null || need_apt+=(maven)
if ((${#need_apt[@]})); then
  log apt_install packages="${need_apt[*]}"
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" > /dev/null
fi

# The package goes into this checkout's own virtualenv, .venv, in editable
# mode: two checkouts on one machine (a CI clone beside a working tree) never
# repoint each other's `systerns`. The venv sees the machine's site-packages,
# so wheels already installed there (tensorflow-cpu is ~600 MB) are reused.
BASE_PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  if ! "$BASE_PY" -c "import venv, ensurepip" 2> /dev/null; then
    log apt_install packages=python3-venv
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv > /dev/null
  fi
  log venv_create path="$VENV"
  "$BASE_PY" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
log pip_install venv="$VENV"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test,eval]"
if ! "$PY" -c "import tensorflow_serving.apis.prediction_service_pb2_grpc" 2> /dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "tensorflow-serving-api==2.21.0"
fi

"$ROOT/scripts/kafka.sh" fetch
log done
