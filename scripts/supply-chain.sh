#!/usr/bin/env bash
# Supply-chain checks: known vulnerabilities in the locked dependencies, and bandit on src/.
#
#   scripts/supply-chain.sh          pip-audit on requirements.lock, then bandit -r src -lll
#   scripts/supply-chain.sh lock     rewrite requirements.lock from the resolved .venv
#
# pip-audit asks PyPI's JSON API about each pinned version. Where that service cannot be
# reached (an offline machine, a mirror without the JSON API), nothing is audited: the
# script says so loudly and exits 0, because that is an environment limit and not a finding.
# A vulnerability that IS reported fails the run, as does any high-severity bandit issue.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
LOCK=requirements.lock

lock() {
    {
        echo "# Resolved versions of sceau's dependencies (runtime, [test] extra and tooling),"
        echo "# from the project venv: scripts/supply-chain.sh lock. Audited by pip-audit."
        "$PY" -m pip freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f
    } > "$LOCK"
    echo "wrote $LOCK ($(grep -c '==' "$LOCK") pins)"
}

audit() {
    if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
        echo "supply-chain: WARNING: pip-audit is not installed ($VENV/bin/pip install pip-audit)" >&2
        return 0
    fi
    local report
    report=$(mktemp)
    # The lock is complete (--no-deps) and nothing is installed (--disable-pip).
    if ! "$PY" -m pip_audit -r "$LOCK" --no-deps --disable-pip -s pypi -f json -o "$report" \
            --progress-spinner off 2>"$report.err"; then
        if [ ! -s "$report" ]; then
            echo "supply-chain: WARNING: pip-audit could not run; nothing audited:" >&2
            tail -n 3 "$report.err" >&2
            rm -f "$report" "$report.err"
            return 0
        fi
    fi
    local status=0
    "$PY" - "$report" <<'EOF' || status=$?
import json
import sys

data = json.load(open(sys.argv[1]))
deps = data.get("dependencies", [])
skipped = [d for d in deps if d.get("skip_reason")]
vulnerable = [d for d in deps if d.get("vulns")]
for dep in vulnerable:
    for vuln in dep["vulns"]:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
        print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
if deps and len(skipped) == len(deps):
    print(f"supply-chain: WARNING: the vulnerability service answered for none of the "
          f"{len(deps)} locked packages (offline, or a mirror without PyPI's JSON API): "
          f"NOTHING WAS AUDITED here; run this where pypi.org is reachable.", file=sys.stderr)
elif skipped:
    print(f"supply-chain: WARNING: {len(skipped)} package(s) not audited: "
          + ", ".join(d["name"] for d in skipped), file=sys.stderr)
audited = len(deps) - len(skipped)
print(f"pip-audit: {audited} package(s) audited, {len(vulnerable)} vulnerable")
sys.exit(1 if vulnerable else 0)
EOF
    rm -f "$report" "$report.err"
    return $status
}

static() {
    if ! "$PY" -m bandit --version >/dev/null 2>&1; then
        echo "supply-chain: WARNING: bandit is not installed ($VENV/bin/pip install bandit)" >&2
        return 0
    fi
    # High severity fails; medium and low are reviewed by hand (ruff's S rules run in lint).
    "$PY" -m bandit -r src -lll -q
    echo "bandit: no high-severity issue in src/"
}

case "${1:-check}" in
    lock) lock ;;
    check) status=0; audit || status=1; static || status=1; exit $status ;;
    *) echo "usage: $0 [check|lock]" >&2; exit 2 ;;
esac
