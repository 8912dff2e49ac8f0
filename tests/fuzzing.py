"""Shared Hypothesis settings of the fuzz suites: bounded, and deterministic in CI."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
