"""CoreConfig: INLET_* variables, flags winning over them, validation."""

from __future__ import annotations

import pytest

from service.config import CoreConfig


def test_environment_then_flags() -> None:
    environ = {
        "INLET_DURABLE": "0",
        "INLET_SUPPORTED_TYPES": "track, identify",
        "INLET_RATE_LIMIT_PER_KEY": "5",
        "INLET_DATABASE_URL": "env.db",
    }
    config = CoreConfig.from_env(environ, database="flag.db", listen=None)
    assert config.durable is False
    assert config.supported_types == ("track", "identify")
    assert config.rate_limit_per_key == 5.0
    assert config.database == "flag.db"  # the flag wins
    assert config.listen == "127.0.0.1:50051"  # an unset flag leaves the default


@pytest.mark.parametrize(
    "environ",
    [
        {"INLET_SUPPORTED_TYPES": "track,fly"},
        {"INLET_DURABLE": "maybe"},
        {"INLET_RATE_LIMIT_PER_KEY": "-1"},
    ],
)
def test_bad_settings_are_refused_at_start(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        CoreConfig.from_env(environ)
