"""`inlet contract-test` is itself tested: it passes Inlet and names what is wrong elsewhere."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from inlet_tools.contract.config import ContractConfig
from inlet_tools.contract.property_run import run_property_tests
from inlet_tools.contract.report import render_text, write_junit
from inlet_tools.contract.runner import run_contract_test
from inlet_tools.contract.scenarios import basic, segment_consequence
from tests.stack import LiveStack

KEY = "partner-key"
KNOWN_TYPES = {"identify", "track", "page", "screen", "group", "alias", "delete"}


def destination(*broken: str) -> web.Application:
    """A small Segment destination that follows the contract, except where `broken` says."""

    def error(status: int, message: str) -> web.Response:
        if "text_errors" in broken:
            return web.Response(status=status, text=message)
        return web.json_response({"message": message}, status=status)

    async def receive(request: web.Request) -> web.Response:
        if "any_key" not in broken and request.headers.get("Authorization") != basic(KEY):
            return error(401, "bad key")
        settings = request.headers.get("X-Segment-Settings")
        if settings is not None and settings != "e30=":  # base64 of "{}"
            return error(400, "bad settings")
        body = await request.read()
        if len(body) > 64 * 1024:
            return error(413, "too big")
        try:
            event = json.loads(body)
        except ValueError:
            return error(500 if "500_on_bad_json" in broken else 400, "not JSON")
        if not isinstance(event, dict):
            return error(400, "not an object")
        if event.get("type") not in KNOWN_TYPES and "200_for_unknown_type" not in broken:
            return error(501, "unsupported type")
        if event.get("type") == "track" and not event.get("event"):
            return error(400, "track requires event")
        return web.json_response({"message": "ok"})

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/hooks/segment", receive)
    return app


@contextmanager
def serving(app: web.Application) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/segment"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def scenarios_against(url: str, tmp_path: Path) -> dict[str, list[str]]:
    config = ContractConfig(url=url, api_key=KEY, settings="e30=", skip_property_run=True)
    report = run_contract_test(config, tmp_path)
    return {o.scenario.name: o.problems for o in report.outcomes}


def test_a_compliant_destination_passes(tmp_path: Path) -> None:
    with serving(destination()) as url:
        problems = scenarios_against(url, tmp_path)
    assert {name: p for name, p in problems.items() if p} == {}


@pytest.mark.parametrize(
    ("broken", "failing", "explanation"),
    [
        ("500_on_bad_json", {"malformed JSON", "empty body"}, "Segment retries this for hours"),
        ("any_key", {"unknown key", "garbled key", "missing key"}, "must be refused"),
        ("200_for_unknown_type", {"unsupported type"}, "must be refused"),
        ("text_errors", None, "not application/json"),
    ],
)
def test_a_broken_destination_fails_the_right_scenario(
    tmp_path: Path, broken: str, failing: set[str] | None, explanation: str
) -> None:
    with serving(destination(broken)) as url:
        problems = scenarios_against(url, tmp_path)
    failed = {name for name, p in problems.items() if p}
    if failing is None:  # every error scenario is affected
        failing = {name for name in problems if not name.startswith(("valid", "redelivered"))}
    assert failed == failing
    for name in failing:
        assert any(explanation in problem for problem in problems[name]), problems[name]


def test_property_run_catches_a_server_error(tmp_path: Path) -> None:
    with serving(destination("500_on_bad_json")) as url:
        config = ContractConfig(url=url, api_key=KEY, settings="e30=", max_examples=10)
        report = run_contract_test(config, tmp_path)
    assert report.property_run is not None and not report.property_run.passed
    assert "Server error" in report.property_run.output
    assert not report.passed
    text = render_text(report, url)
    assert "FAIL  malformed JSON" in text and text.rstrip().splitlines()[-1].startswith("FAIL")
    junit = tmp_path / "junit.xml"
    write_junit(report, junit)
    suites = ET.parse(junit).getroot()
    conformance = next(
        s for s in suites.iter("testsuite") if s.get("name") == "segment-conformance"
    )
    assert conformance.get("failures") == "2"
    failed = [c.get("name") for c in conformance.iter("testcase") if c.find("failure") is not None]
    assert failed == ["malformed JSON", "empty body"]


@pytest.mark.parametrize(
    ("settings", "seed"),
    [(["--settings", '{"region": "eu"}'], 1), ([], 1), ([], 2)],
    ids=["settings", "no-settings-seed-1", "no-settings-seed-2"],
)
def test_inlet_passes_its_own_contract(
    live: LiveStack, tmp_path: Path, settings: list[str], seed: int
) -> None:
    # Run as docs/contract-test.md shows it, with and without --settings.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inlet_app.cli",
            "contract-test",
            "--url",
            live.stack.url + "/segment",
            "--key",
            live.stack.keys["ingest"],
            *settings,
            "--seed",
            str(seed),
            "--max-examples",
            "20",
            "--junit-xml",
            str(tmp_path / "junit.xml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 19/19 scenarios passed; property-based run passed" in result.stdout
    assert ET.parse(tmp_path / "junit.xml").getroot().tag == "testsuites"
    # The redelivery is answered as one, not as an event of the user the delete scenario
    # deleted: that one has a user of its own.
    redelivery = next(line for line in result.stdout.splitlines() if "redelivered" in line)
    assert '"already stored"' in redelivery, redelivery


def strict_about_settings(target: str) -> web.Application:
    """A correct destination that refuses every X-Segment-Settings but base64 of a JSON
    object (Inlet without its leniency), in front of Inlet for everything else."""

    async def receive(request: web.Request) -> web.Response:
        settings = request.headers.get("X-Segment-Settings")
        if settings is not None:
            try:
                decoded = json.loads(base64.b64decode(settings, validate=True))
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                return web.json_response({"message": "bad settings"}, status=400)
        async with (
            aiohttp.ClientSession() as session,
            session.post(target, data=await request.read(), headers=request.headers) as reply,
        ):
            body = await reply.read()
            return web.Response(status=reply.status, body=body, headers=reply.headers)

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/hooks/segment", receive)
    return app


@pytest.mark.parametrize("settings", ["", "e30="])
def test_property_run_sends_only_settings_segment_would(
    live: LiveStack, tmp_path: Path, settings: str
) -> None:
    # Inlet's pattern admits values Segment never sends (base64 of `{...}` that is not
    # JSON); a destination may refuse them, and the run must not hold that against it.
    with serving(strict_about_settings(live.stack.url + "/segment")) as url:
        config = ContractConfig(
            url=url, api_key=live.stack.keys["ingest"], settings=settings, max_examples=10, seed=3
        )
        run = run_property_tests(config, tmp_path)
    assert run.passed, run.output


def test_segment_consequences() -> None:
    assert [segment_consequence(s) for s in (200, 202, 400, 401, 408, 429, 500, 501, 503)] == [
        "delivered",
        "delivered",
        "dropped",
        "dropped",
        "retried",
        "retried",
        "retried",
        "dropped",
        "retried",
    ]


def test_openapi_is_shipped_in_the_package() -> None:
    from inlet_tools.contract.property_run import shipped_spec

    root = Path(__file__).resolve().parents[2]
    assert shipped_spec() == (root / "openapi.yaml").read_text("utf-8")
