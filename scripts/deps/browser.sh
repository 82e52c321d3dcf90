#!/usr/bin/env bash
# What the browser tests (tests/web_page.rs) need besides cargo: Debian's Chromium, which
# Playwright drives (it cannot download a browser of its own here), tmux for the terminal test
# under a real pseudo-terminal, and playwright-core pinned by tests/web/package-lock.json.
# Idempotent: a second run only checks; apt-get update runs only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Chromium renders text with whatever fonts exist; without any, screenshots show boxes.
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
    echo "browser.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# `npm ci` installs exactly what the lock file pins; skipped when that version is installed.
want=$(node -p "require('./tests/web/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./tests/web/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ $want != "$have" ]]; then
    echo "browser.sh: npm ci in tests/web (playwright-core $want)" >&2
    (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi
