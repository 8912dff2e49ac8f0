"""The bridge's hand-off to the core, in the same process (`inlet serve`) and over gRPC:
the same verdicts, and the event keeps the time the bridge received it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from http_bridge.config import BridgeConfig
from http_bridge.core_client import Core, GrpcCore
from inlet.v1 import events_pb2
from inlet_app.in_process import InProcessCore
from service.handoff import Submission, Verdict, batch_response, item_message, verdict_of
from service.store.base import EventQuery
from tests.stack import Stack, start_stack


def test_a_submission_crosses_the_wire_unchanged() -> None:
    item = item_message(
        Submission(b'{"type":"track"}', "inlet_k_s", b'{"a":1}', 1_700_000_000_123_456)
    )
    assert (item.json, item.api_key, item.settings_json) == (
        b'{"type":"track"}',
        "inlet_k_s",
        b'{"a":1}',
    )
    assert (item.received_at.seconds, item.received_at.nanos) == (1_700_000_000, 123_456_000)
    # No receive time: none on the wire either, and the core uses its own clock.
    assert not item_message(Submission(b"{}", "k")).HasField("received_at")


def test_verdicts_cross_the_wire_unchanged() -> None:
    verdicts = [
        Verdict(events_pb2.OUTCOME_STORED, message_id="m-1", sequence=7, account="acme"),
        Verdict(events_pb2.OUTCOME_DUPLICATE, message_id="m-1", account="acme"),
        Verdict(
            events_pb2.OUTCOME_REJECTED,
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            "missing_field",
            "track requires `event`",
            account="acme",
        ),
    ]
    wire = events_pb2.IngestBatchResponse.FromString(batch_response(verdicts).SerializeToString())
    assert [verdict_of(result) for result in wire.results] == verdicts


@pytest.fixture(params=["grpc", "in-process"])
async def core(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Stack, Core]]:
    stack = await start_stack(tmp_path)
    client: Core
    if request.param == "grpc":  # a bridge in front of a separate core
        client = GrpcCore(BridgeConfig(core_target=stack.core_target))
    else:  # `inlet serve`: bridge and core in one process
        client = InProcessCore(stack.core)
    yield stack, client
    await client.close()
    await stack.stop()


async def test_both_paths_give_the_same_verdicts_and_keep_what_the_bridge_sent(
    core: tuple[Stack, Core],
) -> None:
    stack, client = core
    key = stack.keys["ingest"]
    event = b'{"type":"track","userId":"u-1","event":"Signed Up","messageId":"hand-1"}'
    an_hour_ago_us = time.time_ns() // 1000 - 3_600_000_000
    verdicts = await client.ingest_batch(
        [
            Submission(event, key, b'{"region":"eu"}', an_hour_ago_us),
            Submission(event, key),  # a redelivery
            Submission(b'{"type":"track","userId":"u-1"}', key),
            Submission(event, "inlet_nokey_nosecret"),
        ]
    )
    assert [(v.outcome, v.message_id, v.reason, v.account) for v in verdicts] == [
        (events_pb2.OUTCOME_STORED, "hand-1", "", "acme"),
        (events_pb2.OUTCOME_DUPLICATE, "hand-1", "", "acme"),
        (events_pb2.OUTCOME_REJECTED, "", "missing_field", "acme"),
        (events_pb2.OUTCOME_REJECTED, "", "invalid_api_key", ""),
    ]
    assert verdicts[0].sequence > 0
    (stored,) = await stack.store.list_events(EventQuery(stack.account_ids["acme"]))
    # The bridge's receive time, not the core's: the event has no `timestamp` of its own.
    assert stored.received_at_us == stored.timestamp_us == an_hour_ago_us
    assert stored.settings == b'{"region":"eu"}'
