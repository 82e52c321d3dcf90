"""A small MCP server over streamable HTTP for tests/mcp_client.rs: one the tests can kill and
start again, and one that serves the bad input the client must survive.

    http_server.py --port N [--bad]

Tools: echo, fail (an isError result), big (a result of N megabytes), slow (notes a
cancellation in a file), add_tool (adds the tool
`late` and sends notifications/tools/list_changed), and, with --bad, a tool whose input schema
is invalid and two tools whose names clash once made provider-safe (`clash.a`, `clash_a`).
"""

import argparse

import anyio

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--bad", action="store_true")
args = parser.parse_args()

mcp = FastMCP("stepwise-test", host="127.0.0.1", port=args.port, log_level="WARNING")


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def echo(text: str) -> str:
    """Returns the text it is given."""
    return f"echo: {text}"


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason given."""
    raise ValueError(f"failing on purpose: {reason}")


@mcp.tool()
def big(megabytes: int) -> str:
    """Returns a text of this many megabytes."""
    return "x" * (megabytes * 1024 * 1024)


@mcp.tool()
async def slow(seconds: float, marker: str) -> str:
    """Sleeps; if the client cancels the call meanwhile, writes "cancelled" to the file `marker`."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with open(marker, "w") as f:
            f.write("cancelled")
        raise
    return "slept"


@mcp.tool()
async def add_tool(ctx: Context) -> str:
    """Adds the tool `late` and tells the client its tool list changed."""

    def late() -> str:
        """A tool added at run time."""
        return "late tool called"

    mcp.add_tool(late, name="late")
    await ctx.session.send_tool_list_changed()
    return "added"


if args.bad:

    def bad_schema(x: int) -> str:
        """Has an invalid input schema."""
        return "unreachable"

    def clash() -> str:
        """One of two tools whose names clash."""
        return "clash"

    mcp.add_tool(bad_schema, name="bad_schema")
    # FastMCP derives schemas from signatures; overwrite one with something that is not an
    # object schema, as a broken server might send.
    mcp._tool_manager._tools["bad_schema"].parameters = {"type": "string"}
    mcp.add_tool(clash, name="clash.a")
    mcp.add_tool(clash, name="clash_a")

mcp.run(transport="streamable-http")
