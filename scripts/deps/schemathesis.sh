#!/usr/bin/env bash
# What tests/openapi_schemathesis.rs needs that cargo does not bring: schemathesis (from PyPI, the
# version pinned below) in its own virtualenv, outside the repository so `cargo clean` and
# worktrees share it. Prints nothing on stdout; a second run only checks.
# The test finds it at $STEPWISE_SCHEMATHESIS or the default path below. Needs python3 >= 3.9
# with venv.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
VENV="${STEPWISE_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/stepwise/venv-schemathesis}"

command -v python3 >/dev/null || { echo "schemathesis.sh: python3 is required" >&2; exit 1; }

stamp="$VENV/.stepwise-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SCHEMATHESIS_VERSION" ] && "$VENV/bin/st" --version >/dev/null 2>&1; then
    echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION present in $VENV" >&2
    exit 0
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
"$VENV/bin/st" --version >&2
echo "$SCHEMATHESIS_VERSION" > "$stamp"
