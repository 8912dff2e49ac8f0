"""openapi.yaml is the truth: every status the bridge can send is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from http_bridge import errors
from http_bridge.status_map import GRPC_TO_HTTP

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def documented(path: str, method: str) -> set[int]:
    return {int(status) for status in SPEC["paths"][path][method]["responses"]}


def bridge_statuses() -> set[int]:
    from_core = set(GRPC_TO_HTTP.values())
    from_bridge = {
        cls.status
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.BridgeError) and cls is not errors.BridgeError
    }
    # aiohttp itself answers 413 while reading an oversized body (re-rendered as JSON);
    # the Expect handler answers 417.
    return from_core | from_bridge | {413, 417}


def test_every_status_the_webhook_can_send_is_documented() -> None:
    assert bridge_statuses() <= documented("/segment", "post")


def test_nothing_is_documented_that_cannot_happen() -> None:
    assert documented("/segment", "post") <= bridge_statuses()


def test_error_responses_share_the_error_schema() -> None:
    for status, response in SPEC["paths"]["/segment"]["post"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]["$ref"]
        expected = "Accepted" if status == "200" else "Error"
        assert schema == f"#/components/schemas/{expected}", status
    assert SPEC["components"]["schemas"]["Error"]["required"] == ["message", "code"]


def test_retry_later_statuses_document_retry_after() -> None:
    responses = SPEC["paths"]["/segment"]["post"]["responses"]
    for status in ("429", "503"):
        assert "Retry-After" in responses[status]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]


#: The event routes of Segment's Tracking API; `/v1/m` (analytics.js's client metrics,
#: never stored) has its own statuses.
SDK_PATHS = [path for path in SPEC["paths"] if path.startswith("/v1/") and path != "/v1/m"]


def sdk_statuses() -> set[int]:
    # Per-event statuses are the webhook's (the same core verdicts and bridge errors);
    # the request's status is one of them (sdk.verdict), or 400 for mixed rejects.
    return bridge_statuses()


def test_every_sdk_route_is_documented_with_exactly_the_statuses_it_can_send() -> None:
    from http_bridge import sdk

    assert sorted(SDK_PATHS) == sorted([*sdk.SINGLE_ROUTES, *sdk.BATCH_ROUTES])
    for path in SDK_PATHS:
        assert documented(path, "post") == sdk_statuses(), path


def test_sdk_responses_use_the_sdk_schemas() -> None:
    for path in SDK_PATHS:
        for status, response in SPEC["paths"][path]["post"]["responses"].items():
            schema = response["content"]["application/json"]["schema"]["$ref"]
            expected = "SdkAccepted" if status == "200" else "SdkError"
            assert schema == f"#/components/schemas/{expected}", (path, status)
        responses = SPEC["paths"][path]["post"]["responses"]
        assert "Retry-After" in responses["429"]["headers"]
        assert "Retry-After" in responses["503"]["headers"]
        assert "WWW-Authenticate" in responses["401"]["headers"]
    assert SPEC["components"]["schemas"]["SdkError"]["required"] == ["message", "code"]


def test_the_client_metrics_route_documents_exactly_what_it_can_send() -> None:
    # No key, no core: the bridge's own request errors, and a bug.
    assert documented("/v1/m", "post") == {200, 400, 408, 413, 415, 417, 500}
    assert SPEC["paths"]["/v1/m"]["post"]["security"] == []


def test_every_route_of_the_bridge_is_documented() -> None:
    from http_bridge.app import create_app
    from http_bridge.config import BridgeConfig

    app = create_app(BridgeConfig())
    routes = {
        (info.get("path") or info.get("formatter"), route.method.lower())
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        for info in [route.resource.get_info()]
    }
    spec = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert routes == spec


def test_metrics_is_documented_as_prometheus_text() -> None:
    responses = SPEC["paths"]["/metrics"]["get"]["responses"]
    assert set(responses) == {"200", "401", "500"}  # 401: INLET_METRICS_TOKEN set, not sent
    assert "text/plain" in responses["200"]["content"]
