"""The gRPC contract for callers in any language: buf lint, compatibility with the last
release (buf breaking), and the language options every .proto file declares.

buf comes from npm (scripts/buf.py pins it); its tests skip where Node.js is absent,
except under CI (`CI` set), where that is a failure: the compatibility check must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from scripts import buf as buf_tool

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"
WELL_KNOWN = Path(protoc.__file__).parent / "_proto"
PROTO_FILES = sorted(path.relative_to(PROTO).as_posix() for path in PROTO.rglob("*.proto"))

#: The RPCs released with names that break buf's STANDARD rules (proto/buf.yaml says
#: why they stay): (rule, file, rpc). A new RPC breaking one of them fails the lint test.
EXEMPT = {
    ("RPC_REQUEST_STANDARD_NAME", "inlet/v1/events.proto", "Ingest"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/events.proto", "Ingest"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/events.proto", "Subscribe"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/profiles.proto", "GetProfile"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/admin.proto", "WhoAmI"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/admin.proto", "RotateKey"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/admin.proto", "SetAccountSuspended"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/admin.proto", "SetMaintenance"),
    ("RPC_RESPONSE_STANDARD_NAME", "inlet/v1/admin.proto", "GetMaintenance"),
    ("RPC_REQUEST_RESPONSE_UNIQUE", "inlet/v1/admin.proto", "CreateKey"),
    ("RPC_REQUEST_RESPONSE_UNIQUE", "inlet/v1/admin.proto", "RotateKey"),
    ("RPC_REQUEST_RESPONSE_UNIQUE", "inlet/v1/admin.proto", "SetMaintenance"),
    ("RPC_REQUEST_RESPONSE_UNIQUE", "inlet/v1/admin.proto", "GetMaintenance"),
}


@pytest.fixture(scope="session")
def buf() -> Path:
    try:
        return buf_tool.ensure_buf()
    except buf_tool.BufUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: CI must run the proto lint and compatibility check")
        pytest.skip(f"{exc}: the buf lint and breaking tests skipped")


def findings(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """buf's `--error-format=json` output, one finding a line."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_the_protos_pass_buf_lint(buf: Path) -> None:
    result = buf_tool.lint()
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_released_rpcs_are_exempt_from_the_standard_rules(buf: Path) -> None:
    config = yaml.safe_load((PROTO / "buf.yaml").read_text())
    ignored = config["lint"].pop("ignore_only")
    # Each rule is waived in exactly the files of its exempt RPCs.
    assert {rule: set(paths) for rule, paths in ignored.items()} == {
        rule: {path for other, path, _ in EXEMPT if other == rule} for rule, _, _ in EXEMPT
    }
    result = buf_tool.run("lint", "--error-format=json", "--config", json.dumps(config))
    assert result.returncode != 0, "no rule is broken any more: shrink buf.yaml's ignore_only"
    broken = set()
    for finding in findings(result):
        path, line = finding["path"], finding["start_line"]
        declaration = (PROTO / path).read_text().splitlines()[line - 1]
        rpc = re.search(r"\brpc (\w+)\(", declaration)
        broken.add((finding["type"], path, rpc.group(1) if rpc else declaration.strip()))
    assert broken == EXEMPT


def test_the_protos_are_compatible_with_the_last_release(buf: Path) -> None:
    result = buf_tool.breaking()
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_last_release_is_the_newest_version_not_the_last_name() -> None:
    images = [Path(f"v{version}.binpb") for version in ("0.10.0", "0.9.3", "0.2.1", "1.0.0")]
    assert [p.stem for p in sorted(images, key=buf_tool.version_key)] == [
        "v0.2.1",
        "v0.9.3",
        "v0.10.0",
        "v1.0.0",
    ]
    assert buf_tool.last_release().parent == PROTO / "releases"


def changed_copy(tmp_path: Path, path: str, old: str, new: str) -> Path:
    """proto/'s sources and buf.yaml in a temporary folder, with one edit."""
    copy = tmp_path / "proto"
    for name in [*PROTO_FILES, "buf.yaml"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROTO / name, copy / name)
    text = (copy / path).read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once: update the test"
    (copy / path).write_text(text.replace(old, new))
    return copy


# Each edit breaks callers: an old client's bytes or JSON would be misread, or code
# generated from the release would no longer compile against the server's.
BREAKING = {
    "field number": (
        "inlet/v1/events.proto",
        "string api_key = 3;",
        "string api_key = 9;",
        "FIELD_NO_DELETE",
    ),
    "field type": (
        "inlet/v1/events.proto",
        "uint64 after_sequence = 1;",
        "string after_sequence = 1;",
        "FIELD_SAME_TYPE",
    ),
    "field name": (
        "inlet/v1/events.proto",
        "bool from_now = 2;",
        "bool live = 2;",
        "FIELD_SAME_NAME",
    ),
    "enum value number": (
        "inlet/v1/events.proto",
        "OUTCOME_DUPLICATE = 2;",
        "OUTCOME_DUPLICATE = 9;",
        "ENUM_VALUE_NO_DELETE",
    ),
    "rpc removed": (
        "inlet/v1/profiles.proto",
        "  rpc GetProfile(GetProfileRequest) returns (Profile);\n",
        "",
        "RPC_NO_DELETE",
    ),
    "go_package": (
        "inlet/v1/admin.proto",
        'option go_package = "inlet.dev/gen/go/inlet/v1;inletv1";',
        'option go_package = "inlet.dev/gen/go/inlet/v1;inlet";',
        "FILE_SAME_GO_PACKAGE",
    ),
}


@pytest.mark.parametrize("change", BREAKING)
def test_buf_breaking_fails_on_a_breaking_change(buf: Path, tmp_path: Path, change: str) -> None:
    path, old, new, rule = BREAKING[change]
    copy = changed_copy(tmp_path, path, old, new)
    result = buf_tool.run(
        "breaking", "--error-format=json", "--against", buf_tool.last_release(), proto=copy
    )
    assert result.returncode != 0
    assert rule in {finding["type"] for finding in findings(result)}, result.stdout


def test_buf_breaking_accepts_a_new_field(buf: Path, tmp_path: Path) -> None:
    copy = changed_copy(
        tmp_path,
        "inlet/v1/events.proto",
        "  bool from_now = 2;\n",
        "  bool from_now = 2;\n  // A compatible addition.\n  string note = 99;\n",
    )
    result = buf_tool.breaking(proto=copy)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the language options: what a Go or Java team generates without patching ----


def pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\W]+", name))


def expected_options(file: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    """buf managed mode's defaults, with Inlet's domain (inlet.dev) as the Go import
    prefix and, reversed, the Java package prefix (docs/grpc-api.md)."""
    parts = file.package.split(".")
    stem = Path(file.name).stem
    namespace = [pascal(part) for part in parts]
    initials = "".join(part[0] for part in parts if not re.fullmatch(r"v\d+\w*", part))
    return {
        "csharp_namespace": ".".join(namespace),
        "go_package": f"inlet.dev/gen/go/{'/'.join(parts)};{''.join(parts[-2:])}",
        "java_multiple_files": True,
        "java_outer_classname": f"{pascal(stem)}Proto",
        "java_package": f"dev.{file.package}",
        "objc_class_prefix": initials.upper().ljust(3, "X"),
        "php_metadata_namespace": "\\".join([*namespace, "GPBMetadata"]),
        "php_namespace": "\\".join(namespace),
        "ruby_package": "::".join(namespace),
    }


def test_every_proto_file_declares_the_language_options(tmp_path: Path) -> None:
    out = tmp_path / "set.binpb"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{WELL_KNOWN}",
        f"--descriptor_set_out={out}",
        *(str(PROTO / name) for name in PROTO_FILES),
    ]
    assert protoc.main(args) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert sorted(file.name for file in files) == PROTO_FILES
    for file in files:
        want = expected_options(file)
        declared = {field.name: value for field, value in file.options.ListFields()}
        assert declared == want, file.name


#: What each generator writes for events.proto, and text proving the options took.
GENERATED = {
    "go": ("inlet/v1/events.pb.go", "package inletv1"),
    "go-grpc": ("inlet/v1/events_grpc.pb.go", "package inletv1"),
    "java": ("dev/inlet/v1/StoredEvent.java", "package dev.inlet.v1;"),
    "csharp": ("Events.cs", "namespace Inlet.V1 {"),
    "php": ("Inlet/V1/GPBMetadata/Events.php", "namespace Inlet\\V1\\GPBMetadata;"),
    "ruby": ("inlet/v1/events_pb.rb", "module Inlet"),
    "objc": ("inlet/v1/Events.pbobjc.h", "@interface IXXStoredEvent : GPBMessage"),
}


@pytest.mark.parametrize("language", GENERATED)
def test_code_generated_for_other_languages_takes_the_options(
    buf: Path, tmp_path: Path, language: str
) -> None:
    if language.startswith("go"):
        tool = f"protoc-gen-{language}"
        # module=: files land under the import path's tail, as in a Go module there.
        plugin = {"local": tool, "opt": "module=inlet.dev/gen/go"}
    else:
        tool, plugin = "protoc", {"protoc_builtin": language}
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/install installs Debian's)")
    template = {"version": "v2", "plugins": [{**plugin, "out": str(tmp_path)}]}
    result = buf_tool.run("generate", "--template", json.dumps(template))
    assert result.returncode == 0, result.stderr
    path, line = GENERATED[language]
    assert line.encode() in (tmp_path / path).read_bytes()  # PHP's holds binary too
