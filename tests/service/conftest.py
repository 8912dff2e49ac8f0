"""Fixtures shared by the core's gRPC tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.stack import Stack


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the test stack's core (modules may override `stack`)."""
    async with grpc.aio.insecure_channel(stack.core_target) as channel:
        yield channel
