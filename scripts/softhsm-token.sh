#!/usr/bin/env bash
# Creates a throw-away SoftHSM2 token for tests and local trials.
#
#   scripts/softhsm-token.sh DIR LABEL
#
# Writes DIR/softhsm2.conf (token store DIR/tokens) unless it exists, initializes a token
# labelled LABEL in the first free slot, and prints the line to export SOFTHSM2_CONF.
# PINs come from the environment, never from the command line of this script:
#   SCEAU_PKCS11_PIN     user PIN   (generated and printed to stderr when unset)
#   SOFTHSM_SO_PIN       SO PIN     (generated when unset; a throw-away token needs no SO)
# softhsm2-util itself takes the PINs as arguments: fine for a throw-away token on a
# developer machine, not how a production token should be initialized (docs/hsm.md).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 2
fi
dir=$1
label=$2
command -v softhsm2-util >/dev/null 2>&1 || {
    echo "softhsm-token: softhsm2-util not found (apt-get install softhsm2)" >&2
    exit 1
}

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
    cat >"$conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi

pin=${SCEAU_PKCS11_PIN:-}
if [ -z "$pin" ]; then
    pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    echo "softhsm-token: generated user PIN: $pin" >&2
fi
so_pin=${SOFTHSM_SO_PIN:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}

SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" \
    --so-pin "$so_pin" --pin "$pin" >/dev/null
echo "export SOFTHSM2_CONF=$conf"
