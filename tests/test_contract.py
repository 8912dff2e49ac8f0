"""The Schemathesis run of openapi.yaml against a live bridge and core.

Positive and negative phases, real credentials, every default check (server errors,
status-code and response-schema conformance, auth probes, negative-data rejection,
positive-data acceptance). Two guards keep it honest: the credentials come from a
real key (a run without them would pass vacuously: every request a 401), and
`test_a_valid_event_is_stored` proves a plain valid event really gets 200.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import yaml

from tests.stack import LiveStack, basic

ROOT = Path(__file__).resolve().parents[1]

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 60},
        # 501 (type not supported) and 503 (retry later) are part of the Segment
        # contract, not crashes; 500 stays a failure.
        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", "501", "503"]}},
        # A batch with one schema-violating event among valid ones is answered 200, that
        # event rejected in `results`: partial acceptance is the documented contract (as
        # Segment's Tracking API does), so "schema-violating request accepted" does not
        # apply to the batch routes. Batch-level violations are 4xx, pinned in
        # tests/http_bridge/test_sdk.py and test_sdk_routes.py.
        "operations": [
            {
                "include-path-regex": "^/v1/(batch|import|b)$",
                "checks": {"negative_data_rejection": {"enabled": False}},
            }
        ],
    }
)
# Every operation of the spec is run: the webhook and the SDK routes (`/v1/*`) alike.
schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml", config=CONFIG)


@schema.parametrize()
@hypothesis.settings(deadline=None, derandomize=True)
def test_openapi_contract(case: schemathesis.Case, live: LiveStack) -> None:
    # The real key, as Segment sends it. Schemathesis still drops or garbles the
    # header for its auth probes (and then expects 401).
    case.call_and_validate(
        base_url=live.stack.url, headers={"Authorization": basic(live.stack.keys["ingest"])}
    )


def test_a_valid_event_is_stored(live: LiveStack) -> None:
    event = {"type": "track", "userId": "u1", "event": "Contract Checked", "messageId": "c-1"}
    reply = requests.post(
        live.stack.url + "/segment",
        json=event,
        headers={"Authorization": basic(live.stack.keys["ingest"])},
        timeout=5,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["messageId"] == "c-1"
    account = live.stack.account_ids["acme"]
    assert live.run(live.stack.store.get_event_payload(account, "c-1")) is not None


# -- Schemathesis as someone outside runs it --------------------------------------------
# `st run openapi.yaml --checks all` against a live deployment, nothing configured: every
# default, every check, positive and negative data. What the spec says must be exactly
# what the server does, X-Segment-Settings included.

WEBHOOK = yaml.safe_load((ROOT / "openapi.yaml").read_text())["paths"]["/segment"]["post"]


def outside_run(
    live: LiveStack, work: Path, seed: int, config: Path | None = None
) -> tuple[list[tuple[str, int]], list[Any]]:
    """The failed checks (name, status) of one run, and every (mode, settings, status, code).
    Without `config`, the webhook alone and nothing configured; with it, the whole spec."""
    events = work / "events.ndjson"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        *(["--config-file", str(config)] if config else []),
        "run",
        str(ROOT / "openapi.yaml"),
        "--url",
        live.stack.url,
        "--checks",
        "all",
        "--auth",
        f"{live.stack.keys['ingest']}:",
        "--seed",
        str(seed),
        *([] if config else ["--include-operation-id", "receiveSegmentEvent"]),
        "--max-examples",
        "20",
        "--continue-on-failure",  # every finding, none hidden by another
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(events),
    ]
    # From an empty directory: no schemathesis.toml is found, nothing is configured.
    done = subprocess.run(
        command, cwd=work, capture_output=True, text=True, timeout=120, check=False
    )
    assert events.exists(), done.stdout + done.stderr
    failed, sent = [], []
    for line in events.read_text().splitlines():
        recorder = json.loads(line).get("ScenarioFinished", {}).get("recorder")
        for case_id, case in (recorder or {}).get("cases", {}).items():
            response = (recorder["interactions"].get(case_id) or {}).get("response")
            if response is None:
                continue
            status = response["status_code"]
            failed += [
                (check["name"], status)
                for check in recorder["checks"].get(case_id, [])
                if check["status"] == "failure"
            ]
            settings = (case["value"].get("headers") or {}).get("X-Segment-Settings")
            body = base64.b64decode(response["content"]["$base64"]) if response["content"] else b""
            code = json.loads(body).get("code") if body.startswith(b"{") else None
            sent.append((case["value"]["meta"]["generation"]["mode"], settings, status, code))
    return failed, sent


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_outside_schemathesis_run_finds_nothing(
    live: LiveStack, tmp_path: Path, seed: int
) -> None:
    failed, sent = outside_run(live, tmp_path, seed)
    # Unconfigured, Schemathesis counts every 5xx as a server error, 501 too: what Inlet
    # answers a `type` it does not take, by Segment's contract (no retry), documented.
    assert [finding for finding in failed if finding != ("not_a_server_error", 501)] == []
    # Not vacuous: settings of the pattern were sent and stored, others refused with 400.
    stored = [value for mode, value, status, _ in sent if mode == "positive" and status == 200]
    assert any(stored), sent
    pattern = re.compile(WEBHOOK["parameters"][0]["schema"]["pattern"])
    refused = [value for _, value, status, code in sent if code == "invalid_settings"]
    assert refused and not any(pattern.fullmatch(value) for value in refused)


def test_an_outside_run_over_the_whole_spec_with_the_documented_config_finds_nothing(
    live: LiveStack, tmp_path: Path
) -> None:
    """Every operation of openapi.yaml, every check, with examples/schemathesis.toml (which
    only allows the 501 of an unsupported type, docs/contract-test.md): nothing fails."""
    failed, sent = outside_run(live, tmp_path, 1, ROOT / "examples" / "schemathesis.toml")
    assert failed == []
    assert {status for _, _, status, _ in sent} >= {200, 400, 401, 501}, sent
