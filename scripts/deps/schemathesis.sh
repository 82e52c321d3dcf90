#!/usr/bin/env bash
# What tests/openapi_schemathesis.rs needs that cargo does not bring: schemathesis (from PyPI, the
# version pinned below) in its own virtualenv, outside the repository so `cargo clean` and other
# worktrees keep it. The test finds it at $STEPWISE_SCHEMATHESIS or the default path below.
# A second run only checks. Needs python3 >= 3.10 with venv.
#
# The interpreter: $STEPWISE_PYTHON, else the first python3.13 / python3.12 / python3 on PATH
# or under pyenv that has the fix of CPython gh-106905 (3.11.8+, 3.12.2+): before it, `ast.parse`
# deep in the stack fails with "AST constructor recursion depth mismatch", which Hypothesis
# (under schemathesis) hits at random while describing its strategies. Without one, the newest
# python3 >= 3.10 found is used, with a warning.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
VENV="${STEPWISE_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/stepwise/venv-schemathesis}"

# Prints 2 for an interpreter with the fix, 1 for another usable one; fails for an unusable one.
grade() {
    "$1" -c 'import sys, venv
v = sys.version_info
assert v >= (3, 10)
print(2 if (3, 11, 8) <= v[:3] < (3, 12) or v[:3] >= (3, 12, 2) else 1)' 2>/dev/null
}

pick_python() {
    local candidates=() c fallback=""
    [ -n "${STEPWISE_PYTHON:-}" ] && candidates+=("$STEPWISE_PYTHON")
    candidates+=(python3.13 python3.12 python3)
    if command -v pyenv >/dev/null; then
        for c in "$(pyenv root)"/versions/3.1[3-9]*/bin/python3 "$(pyenv root)"/versions/3.12*/bin/python3; do
            [ -x "$c" ] && candidates+=("$c")
        done
    fi
    for c in "${candidates[@]}"; do
        case "$(grade "$c" || true)" in
            2) echo "$c"; return ;;
            1) [ -n "$fallback" ] || fallback="$c" ;;
        esac
    done
    [ -n "$fallback" ] || { echo "schemathesis.sh: python3 >= 3.10 with venv is required" >&2; exit 1; }
    echo "schemathesis.sh: warning: $fallback lacks the fix of CPython gh-106905; schemathesis may fail at random" >&2
    echo "$fallback"
}

stamp="$VENV/.stepwise-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SCHEMATHESIS_VERSION" ] && "$VENV/bin/st" --version >/dev/null 2>&1; then
    echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION present in $VENV" >&2
    exit 0
fi
python="$(pick_python)"
echo "schemathesis.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV with $python" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$python" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
"$VENV/bin/st" --version >&2
echo "$SCHEMATHESIS_VERSION" > "$stamp"
