#!/usr/bin/env bash
# Installs the OpenID provider the console tests start (tests/oidc/provider.mjs): the npm
# package oidc-provider at the version tests/oidc/package-lock.json pins, with `npm ci`.
# Idempotent: runs again only when the lock file changed. Needs Node.js >= 20.19 and npm
# (scripts/setup-system.sh installs Debian's when they are missing).
set -euo pipefail
cd "$(dirname "$0")/../tests/oidc"
stamp=node_modules/.sceau-installed
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ]; then
    exit 0
fi
echo "setup-test-provider: npm ci in tests/oidc" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
touch "$stamp"
