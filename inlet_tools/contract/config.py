"""Settings of one `inlet contract-test` run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ContractConfig:
    url: str
    """The webhook URL, as configured in Segment (e.g. https://host/segment)."""
    api_key: str
    """A valid key with the ingest scope, sent as Segment sends it."""
    settings: str = ""
    """X-Segment-Settings to send (base64 of a JSON object); empty: none."""
    spec: Path | None = None
    """OpenAPI spec for the property-based run; None: Inlet's own, shipped in the package."""
    max_examples: int = 50
    seed: int | None = None
    """Schemathesis's seed, to replay a run (it prints the one it used); None: a new one."""
    cacert: str | None = None
    """CA bundle to verify the endpoint's TLS certificate with (self-signed test setups)."""
    skip_property_run: bool = False
    oversize_bytes: int = 2 * 1024 * 1024
