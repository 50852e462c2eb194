"""A stand-in session program for the launcher tests: what SAMSegmentWeb.app promises the launcher (listen on
--host/--port, print the ready line, serve index.html and a websocket at /ws, end when stdin closes), nothing more.
The websocket echoes text prefixed with this process's id."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

from aiohttp import web


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--timeout")
    p.add_argument("--watch-stdin", action="store_true")
    p.add_argument("rest", nargs="*")
    args = p.parse_args()

    def watch():
        while os.read(0, 4096):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()

    async def index(_request):
        return web.Response(text=f"<html>session {os.getpid()} {' '.join(args.rest)}</html>", content_type="text/html")

    async def root(_request):
        raise web.HTTPFound("index.html")

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(f"{os.getpid()}:{msg.data}")
        return sock

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_get("/index.html", index)
    app.router.add_get("/ws", ws)

    async def serve():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"SAMSEGMENT_SESSION_READY {args.port}", flush=True)  # listening, as trame's port callback
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
