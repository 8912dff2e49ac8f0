"""The Schemathesis property-based run of an OpenAPI spec against the live webhook.

Runs Schemathesis's own CLI in a subprocess (its supported runner, with its
readable failure output and curl reproductions). The spec's webhook operation is
re-rooted at the URL under test, so an endpoint at any path can be checked.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inlet_tools.contract.config import ContractConfig

#: 501 (type not supported) and 503 (retry later) belong to Segment's contract; 500 does not.
EXPECTED_STATUSES = ["2xx", "4xx", "501", "503"]


@dataclass
class PropertyRun:
    passed: bool
    summary: str
    output: str
    junit: Path | None = None


def shipped_spec() -> str:
    """Inlet's openapi.yaml as shipped in the package."""
    return (importlib.resources.files("inlet_tools") / "openapi.yaml").read_text("utf-8")


#: What Segment itself requires of answers (partners/direct-destination.md): JSON, and a
#: `message` on errors. Inlet promises more (`code`, `messageId`); other destinations need not.
SEGMENT_SUCCESS: dict[str, Any] = {"type": "object"}
SEGMENT_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}


#: The webhook's operationId in Inlet's openapi.yaml.
WEBHOOK_OPERATION_ID = "receiveSegmentEvent"


def webhook_spec(spec_text: str, webhook_path: str, segment_only: bool) -> dict[str, Any]:
    """The spec reduced to its webhook operation (the one POST), moved to `webhook_path`.

    With `segment_only`, response bodies are held to Segment's requirements only and
    X-Segment-Settings is not generated.
    """
    import yaml

    spec: dict[str, Any] = yaml.safe_load(spec_text)
    posts = [ops["post"] for ops in spec.get("paths", {}).values() if "post" in ops]
    # Inlet's own spec also has the SDK routes (`/v1/*`): its webhook is named.
    named = [post for post in posts if post.get("operationId") == WEBHOOK_OPERATION_ID]
    if len(named or posts) != 1:
        raise ValueError(
            "the spec must have exactly one POST operation (the webhook), "
            f"or one with operationId {WEBHOOK_OPERATION_ID}"
        )
    operation = (named or posts)[0]
    spec["paths"] = {webhook_path or "/": {"post": operation}}
    spec.pop("servers", None)
    if segment_only:
        # Inlet's pattern for the settings admits values Segment never sends (base64 of
        # `{...}` that is not JSON), which another destination may rightly refuse: the
        # run sends the settings given with --settings on every request, or none.
        operation["parameters"] = [
            parameter
            for parameter in operation.get("parameters", [])
            if str(parameter.get("name", "")).lower() != "x-segment-settings"
        ]
        for status, response in operation.get("responses", {}).items():
            schema = SEGMENT_SUCCESS if str(status).startswith("2") else SEGMENT_ERROR
            response["content"] = {"application/json": {"schema": schema}}
    return spec


def run_property_tests(config: ContractConfig, work_dir: Path) -> PropertyRun:
    if importlib.util.find_spec("schemathesis") is None:
        return PropertyRun(
            False,
            "Schemathesis is not installed",
            "install it with: pip install 'inlet[contract]'",
        )
    url = urlsplit(config.url)
    text = config.spec.read_text("utf-8") if config.spec else shipped_spec()
    spec_file = work_dir / "webhook-spec.json"
    # Inlet's own spec (the default) is held to Segment's answer rules, so the run fits
    # any destination; a spec given with --spec is taken as it is.
    spec = webhook_spec(text, url.path, segment_only=config.spec is None)
    spec_file.write_text(json.dumps(spec))
    settings_line = ""
    if config.settings:
        # On every request, never mutated, as Segment sends them.
        settings_line = f'[headers]\n"X-Segment-Settings" = {json.dumps(config.settings)}\n'
    config_file = work_dir / "schemathesis.toml"
    config_file.write_text(
        "[checks.not_a_server_error]\n"
        f"expected-statuses = {json.dumps(EXPECTED_STATUSES)}\n" + settings_line
    )
    junit = work_dir / "schemathesis-junit.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "run",
        str(spec_file),
        "--url",
        f"{url.scheme}://{url.netloc}",
        "--auth",
        f"{config.api_key}:",
        "--max-examples",
        str(config.max_examples),
        "--phases",
        "examples,coverage,fuzzing",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--request-timeout",
        "10",
    ]
    if config.cacert:
        command += ["--tls-verify", config.cacert]
    if config.seed is not None:
        command += ["--seed", str(config.seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    summary = next(
        (line.strip(" =") for line in reversed(output.splitlines()) if line.startswith("=")),
        f"schemathesis exited with {done.returncode}",
    )
    return PropertyRun(done.returncode == 0, summary, output, junit if junit.exists() else None)
