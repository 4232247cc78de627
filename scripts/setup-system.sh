#!/usr/bin/env bash
# Installs the system packages the test-suite drives for real: SoftHSM2 (PKCS#11 token),
# Debian's Chromium (console browser tests) and Node.js with npm (the OpenID provider of the
# console's OpenID Connect tests, scripts/setup-test-provider.sh). Idempotent; needs root or
# sudo.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup-system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
