"""What the bridge hands the core per event, and the verdict it gets back: plain tuples.

The wire contract is IngestItem/IngestResult (events.proto). When bridge and core share
a process (`inlet serve`), building and reading those protobuf messages for every
event (an IngestItem with its Timestamp, an IngestResult, their field accessors) cost
~5 µs, more than the batcher that carries them (bench/instructions.py). So the bridge
speaks `Submission` and `Verdict`: the in-process core takes and returns them as they
are, and only the gRPC client (http_bridge/core_client.py) and the servicer convert,
at the wire, with the functions below. The field names are the messages' own.

A leaf module: the bridge imports it without the core's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from google.protobuf import timestamp_pb2

from inlet.v1 import events_pb2


class Submission(NamedTuple):
    """One event for the core: IngestItem's fields as the bridge sets them."""

    #: The event, a JSON object as received.
    json: bytes
    api_key: str
    #: `X-Segment-Settings`, base64-decoded; b"" when absent.
    settings_json: bytes = b""
    #: When the bridge received it, µs since the epoch; 0: when the core gets it.
    received_at_us: int = 0


class Verdict(NamedTuple):
    """The core's answer for one event: IngestResult's fields."""

    outcome: int
    #: A google.rpc.Code value: 0 for stored and duplicate events.
    code: int = 0
    reason: str = ""
    message: str = ""
    message_id: str = ""
    sequence: int = 0
    account: str = ""


def item_message(submission: Submission) -> events_pb2.IngestItem:
    """The IngestItem carrying `submission` over gRPC."""
    item = events_pb2.IngestItem(
        json=submission.json,
        api_key=submission.api_key,
        settings_json=submission.settings_json,
    )
    if submission.received_at_us:
        seconds, micros = divmod(submission.received_at_us, 1_000_000)
        item.received_at.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000))
    return item


def verdict_of(result: events_pb2.IngestResult) -> Verdict:
    """The Verdict an IngestResult from a core over gRPC carries."""
    return Verdict(
        result.outcome,
        result.code,
        result.reason,
        result.message,
        result.message_id,
        result.sequence,
        result.account,
    )


def result_message(verdict: Verdict) -> events_pb2.IngestResult:
    return events_pb2.IngestResult(**verdict._asdict())


def batch_response(verdicts: Iterable[Verdict]) -> events_pb2.IngestBatchResponse:
    """The IngestBatchResponse of `verdicts`, built in place (no message per verdict to
    copy in afterwards: as cheap as the IngestResults the core used to build)."""
    response = events_pb2.IngestBatchResponse()
    add = response.results.add
    for v in verdicts:
        if v.code or v.reason or v.message:
            add(
                outcome=v.outcome,
                code=v.code,
                reason=v.reason,
                message=v.message,
                message_id=v.message_id,
                sequence=v.sequence,
                account=v.account,
            )
        else:  # stored or duplicate: the common case, fewer keywords to pass
            add(outcome=v.outcome, message_id=v.message_id, sequence=v.sequence, account=v.account)
    return response
