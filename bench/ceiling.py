"""The ceiling: a bare aiohttp endpoint doing only what any webhook must do.

It reads the body, parses it as JSON (orjson) and checks the Basic header, then
answers 200. Inlet's throughput is reported as a ratio to this, measured in the
same run on the same machine, because absolute numbers drift ±30 % here.

    python bench/ceiling.py PORT KEY [PROCESSES]

With PROCESSES > 1 (the ceiling for `inlet serve --workers N`), that many processes
serve the port together (SO_REUSEPORT), children of this one.
"""

from __future__ import annotations

import base64
import sys

import orjson
from aiohttp import web


def make_app(key: str) -> web.Application:
    expected = "Basic " + base64.b64encode(f"{key}:".encode()).decode()

    async def segment(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"message": "bad key", "code": "invalid_api_key"}, status=401)
        body = await request.read()
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.json_response({"message": "bad json", "code": "invalid_json"}, status=400)
        return web.Response(
            body=orjson.dumps({"message": "stored", "messageId": event.get("messageId")}),
            content_type="application/json",
        )

    app = web.Application(client_max_size=512 * 1024)
    app.router.add_post("/segment", segment)
    return app


def serve(port: int, key: str, reuse_port: bool) -> None:
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    web.run_app(
        make_app(key),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        reuse_port=reuse_port,
        loop=uvloop.new_event_loop() if uvloop else None,
    )


if __name__ == "__main__":
    port, key = int(sys.argv[1]), sys.argv[2]
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if processes <= 1:  # 0: one of several, sharing the port
        serve(port, key, reuse_port=processes == 0)
    else:
        import signal
        import subprocess

        children = [
            subprocess.Popen([sys.executable, __file__, str(port), key, "0"])
            for _ in range(processes)
        ]

        def stop_children(*_: object) -> None:
            for child in children:
                child.terminate()

        signal.signal(signal.SIGTERM, stop_children)
        for child in children:
            child.wait()
