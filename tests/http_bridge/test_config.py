"""BridgeConfig: INLET_* variables, flags winning over them, validation."""

from __future__ import annotations

import pytest

from http_bridge.config import BridgeConfig


def test_environment_then_flags() -> None:
    environ = {
        "INLET_PORT": "9000",
        "INLET_CORE": "core:1",
        "INLET_BODY_TIMEOUT_S": "2.5",
        "INLET_SHUTDOWN_GRACE_S": "4",
    }
    config = BridgeConfig.from_env(environ, port=9100, host=None)
    assert (config.port, config.core_target, config.body_timeout_s) == (9100, "core:1", 2.5)
    assert config.shutdown_grace_s == 4  # the core reads it too: one grace for the process
    assert config.host == "0.0.0.0"


@pytest.mark.parametrize(
    "overrides",
    [
        {"tls_cert": "cert.pem"},
        {"max_body_bytes": 0},
        {"request_timeout_s": 0},
        {"shutdown_grace_s": -1},
    ],
)
def test_bad_settings_are_refused_at_start(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BridgeConfig.from_env({}, **overrides)


def test_sdk_limits_default_to_segments_and_read_the_environment() -> None:
    config = BridgeConfig.from_env({})
    assert (config.sdk_max_event_bytes, config.sdk_max_batch_bytes) == (32 * 1024, 500 * 1024)
    assert config.sdk_max_batch_events == 2_500
    environ = {"INLET_SDK_MAX_EVENT_BYTES": "1000", "INLET_SDK_MAX_BATCH_EVENTS": "10"}
    config = BridgeConfig.from_env(environ)
    assert (config.sdk_max_event_bytes, config.sdk_max_batch_events) == (1000, 10)
    with pytest.raises(ValueError):
        BridgeConfig.from_env({"INLET_SDK_MAX_BATCH_BYTES": "0"})
