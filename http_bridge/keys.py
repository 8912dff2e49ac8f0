"""Typed application state of the bridge (aiohttp AppKeys)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from http_bridge.batcher import Batcher
from http_bridge.config import BridgeConfig
from http_bridge.core_client import Core
from inlet.v1 import events_pb2

CONFIG: Final = web.AppKey("config", BridgeConfig)
CORE: Final = web.AppKey("core", Core)
BATCHER: Final = web.AppKey("batcher", Batcher[events_pb2.IngestItem, events_pb2.IngestResult])
