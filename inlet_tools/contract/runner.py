"""Runs the scenarios against a live endpoint, then the property-based run; builds the report."""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from inlet_tools.contract.config import ContractConfig
from inlet_tools.contract.property_run import PropertyRun, run_property_tests
from inlet_tools.contract.scenarios import Outcome, Request, Scenario, judge, scenarios

#: Segment's webhook timeout is 5 s (classic Webhooks docs); slower answers are retried.
SEGMENT_TIMEOUT_S = 5.0


@dataclass
class ContractReport:
    outcomes: list[Outcome]
    property_run: PropertyRun | None

    @property
    def passed(self) -> bool:
        scenarios_ok = all(outcome.passed for outcome in self.outcomes)
        return scenarios_ok and (self.property_run is None or self.property_run.passed)


async def _send(
    session: aiohttp.ClientSession, url: str, request: Request
) -> tuple[int, str, bytes, float]:
    started = time.monotonic()
    # A file-like body is written in chunks; raw bytes of the oversize scenario (over
    # 1 MiB) would go out in one write that aiohttp warns may stall the loop.
    payload = io.BytesIO(request.body)
    async with session.post(
        url, data=payload, headers=request.headers, allow_redirects=False
    ) as reply:
        body = await reply.read()
        return reply.status, reply.headers.get("Content-Type", ""), body, time.monotonic() - started


async def run_scenario(
    session: aiohttp.ClientSession, config: ContractConfig, scenario: Scenario
) -> Outcome:
    requests = scenario.build(config.api_key, config.settings)
    problems: list[str] = []
    status, content_type, body, elapsed = None, "", b"", 0.0
    try:
        for number, request in enumerate(requests, start=1):
            status, content_type, body, elapsed = await _send(session, config.url, request)
            if number < len(requests) and not 200 <= status < 300:
                problems.append(f"request {number} of {len(requests)} got {status}, expected 2xx")
    except (aiohttp.ClientError, TimeoutError) as exc:
        problems.append(f"no answer: {type(exc).__name__}: {exc}".rstrip(": "))
        return Outcome(scenario, None, "", b"", problems, requests[-1])
    assert status is not None
    problems += judge(scenario, status, content_type, body)
    if elapsed > SEGMENT_TIMEOUT_S:
        problems.append(f"answered after {elapsed:.1f} s: Segment gives up after 5 s and retries")
    return Outcome(scenario, status, content_type, body, problems, requests[-1])


async def run_scenarios(config: ContractConfig) -> list[Outcome]:
    context: ssl.SSLContext | bool = True
    if config.cacert:
        context = ssl.create_default_context(cafile=config.cacert)
    timeout = aiohttp.ClientTimeout(total=SEGMENT_TIMEOUT_S * 2)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        return [
            await run_scenario(session, config, scenario)
            for scenario in scenarios(config.oversize_bytes)
        ]


def run_contract_test(config: ContractConfig, work_dir: Path) -> ContractReport:
    """Both parts against `config.url`; files (Schemathesis reports) go to `work_dir`."""
    outcomes = asyncio.run(run_scenarios(config))
    property_run = None
    if not config.skip_property_run:
        property_run = run_property_tests(config, work_dir)
    return ContractReport(outcomes, property_run)
