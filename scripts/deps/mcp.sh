#!/usr/bin/env bash
# What the MCP tests (tests/mcp_*.rs) need that cargo does not bring, installed idempotently:
#   - tests/mcp/node_modules: the reference MCP servers @modelcontextprotocol/server-everything
#     and @modelcontextprotocol/server-filesystem, at the versions pinned in
#     tests/mcp/package.json and package-lock.json (npm ci);
#   - tests/mcp/.venv: a Python virtualenv with the `mcp` package (pinned below), for the
#     streamable HTTP test server (tests/mcp/http_server.py) and the MCP client that drives
#     `stepwise mcp` (tests/mcp/client.py).
# A second run only checks. Needs node >= 18 with npm, and python3 >= 3.10 with venv.
set -euo pipefail
cd "$(dirname "$0")/../../tests/mcp"

MCP_PY_VERSION="1.30.0"

command -v npm >/dev/null || { echo "mcp.sh: npm is required (apt-get install nodejs npm)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "mcp.sh: python3 is required" >&2; exit 1; }

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if stamp_ok node_modules/.stepwise-installed "$lock_sum" \
    && [ -x node_modules/.bin/mcp-server-everything ] && [ -x node_modules/.bin/mcp-server-filesystem ]; then
    echo "mcp.sh: npm servers present" >&2
else
    npm ci --no-audit --no-fund >&2
    echo "$lock_sum" > node_modules/.stepwise-installed
fi

if stamp_ok .venv/.stepwise-installed "$MCP_PY_VERSION" && .venv/bin/python -c "import mcp" 2>/dev/null; then
    echo "mcp.sh: python mcp $MCP_PY_VERSION present" >&2
else
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_VERSION" >&2
    echo "$MCP_PY_VERSION" > .venv/.stepwise-installed
fi
