"""`proto/` is a complete contract: a client generated from the .proto files alone
(no import of `service/`, nor of Inlet's committed generated code) reads a live core.
It runs docs/grpc-api.md's example, examples/read_api.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import orjson
from grpc_tools import protoc

from inlet.v1 import events_pb2, events_pb2_grpc
from tests.service.test_grpc import bearer
from tests.stack import LiveStack

ROOT = Path(__file__).resolve().parents[1]
WELL_KNOWN = Path(protoc.__file__).parent / "_proto"


def generate(out: Path) -> None:
    out.mkdir(parents=True)
    protos = sorted(str(p) for p in (ROOT / "proto").rglob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    assert protoc.main(args) == 0
    for package in (out / "inlet", out / "inlet" / "v1"):
        (package / "__init__.py").touch()


def test_a_client_generated_from_proto_alone_reads_profiles_history_and_the_stream(
    tmp_path: Path,
) -> None:
    generate(tmp_path / "gen")
    server = LiveStack(tmp_path / "data")
    try:
        stack = server.stack
        key = server.run(stack.add_key("reader", scopes=("ingest", "read")))

        async def send(*events: dict[str, object]) -> None:
            async with grpc.aio.insecure_channel(stack.core_target) as channel:
                stub = events_pb2_grpc.EventServiceStub(channel)
                items = [events_pb2.IngestItem(json=orjson.dumps(e)) for e in events]
                await stub.IngestBatch(
                    events_pb2.IngestBatchRequest(items=items), metadata=bearer(key)
                )

        server.run(
            send(
                {
                    "type": "identify",
                    "userId": "u1",
                    "messageId": "m-1",
                    "traits": {"email": "e@x.io", "logins": 5, "accountId": 9007199254740993123},
                },
                {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-2"},
            )
        )
        # The example runs in its own interpreter with only the generated code on its path.
        check_isolation = (
            "import runpy, sys; "
            "runpy.run_path(sys.argv.pop(1), run_name='__main__'); "
            "import inlet.v1.events_pb2 as m; "
            f"assert m.__file__.startswith({str(tmp_path / 'gen')!r}), m.__file__; "
            "assert not any(n == 'service' or n.startswith('service.') for n in sys.modules)"
        )
        with subprocess.Popen(
            [
                sys.executable,
                "-c",
                check_isolation,
                str(ROOT / "examples" / "read_api.py"),
                "--core",
                stack.core_target,
                "--key",
                key,
                "--user",
                "u1",
                "--follow",
                "1",
            ],
            env={**os.environ, "PYTHONPATH": str(tmp_path / "gen")},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as example:  # its pipes closed at the end
            try:
                assert example.stdout is not None
                lines = []
                for line in example.stdout:
                    lines.append(line)
                    if line.startswith("following after"):
                        server.run(send({"type": "track", "userId": "u2", "event": "Live One"}))
                status = example.wait(timeout=30)
                assert status == 0, example.stderr.read() if example.stderr else ""
            finally:
                if example.poll() is None:
                    example.kill()
    finally:
        server.close()

    assert lines[0].startswith("profile ")
    assert orjson.loads(lines[0].removeprefix("profile ")) == {
        "linkedIds": ["u1"],
        "traits": {"email": "e@x.io", "logins": 5, "accountId": 9007199254740993123},
    }
    assert re.search(r'"logins": 5[,}]', lines[0])  # not 5.0
    assert [line.split()[2:] for line in lines[1:3]] == [["identify", "m-1"], ["track", "m-2"]]
    assert lines[-1].split()[2:] == ["track", "Live", "One"]
