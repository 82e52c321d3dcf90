"""An MCP client (the Python `mcp` package) driving stepwise's MCP server, for tests/mcp_server.rs.

    client.py stdio <stepwise binary> <args…>     start `stepwise mcp …` as a child process
    client.py http <url> <bearer token>           connect to `stepwise serve`'s /mcp

It lists the tools, starts a run with wait=true and a progress callback, starts a second run
without waiting and gets its result with get_run until it ends, lists runs, and calls
cancel_run on an unknown id. It prints one JSON object with what it saw.
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def drive(session):
    await session.initialize()
    out = {}
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["annotations"] = {
        t.name: {"readOnly": t.annotations.readOnlyHint, "destructive": t.annotations.destructiveHint}
        for t in tools.tools
        if t.annotations
    }

    progress = []

    async def on_progress(done, total, message):
        progress.append({"progress": done, "total": total, "message": message})

    waited = await session.call_tool(
        "start_run", {"task": "first task", "wait": True}, progress_callback=on_progress
    )
    out["waited"] = {"is_error": waited.isError, "result": json.loads(text_of(waited))}
    out["progress"] = progress

    started = await session.call_tool("start_run", {"task": "second task"})
    run = json.loads(text_of(started))
    out["started"] = run
    for _ in range(200):
        got = await session.call_tool("get_run", {"id": run["id"]})
        result = json.loads(text_of(got))
        if result["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    out["second"] = result

    listed = await session.call_tool("list_runs", {"limit": 10})
    out["listed"] = [r["id"] for r in json.loads(text_of(listed))["runs"]]

    unknown = await session.call_tool("cancel_run", {"id": "no-such-run"})
    out["unknown"] = {"is_error": unknown.isError, "text": text_of(unknown)}

    bad = await session.call_tool("start_run", {"task": "t", "policy": {"max_retries": "many"}})
    out["bad_policy"] = {"is_error": bad.isError, "text": text_of(bad)}
    return out


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await drive(session)
    else:
        headers = {"Authorization": f"Bearer {sys.argv[3]}"}
        async with streamablehttp_client(sys.argv[2], headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                out = await drive(session)
    print(json.dumps(out))


asyncio.run(main())
