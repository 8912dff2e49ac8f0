"""Typed application state of the bridge (aiohttp AppKeys)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from http_bridge.batcher import Batcher
from http_bridge.config import BridgeConfig
from http_bridge.core_client import Core
from http_bridge.drain import Drain
from http_bridge.recorder import Recorder
from service.handoff import Submission, Verdict

CONFIG: Final = web.AppKey("config", BridgeConfig)
CORE: Final = web.AppKey("core", Core)
BATCHER: Final = web.AppKey("batcher", Batcher[Submission, Verdict])
RECORDER: Final = web.AppKey("recorder", Recorder)
DRAIN: Final = web.AppKey("drain", Drain)
#: The debugger's cache of checked keys: key -> (when checked, account or None for all).
VIEWERS: Final = web.AppKey("viewers", dict[str, tuple[float, str | None]])
