#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need that cargo does not bring
# (each `scripts/deps/*.sh`, idempotent: a second run only checks), then runs every test target
# and the documentation's examples (`--all-targets` leaves doctests out).
# A test whose external part is missing fails naming the script that installs it; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for deps in scripts/deps/*.sh; do
    echo "test.sh: $deps" >&2
    bash "$deps"
done
cargo test --all-targets "$@"
cargo test --doc "$@"
