"""The docs that describe the code stay true to it: cheap checks, no server.

- every RPC of `proto/inlet/v1/*.proto` is named in docs/grpc-api.md;
- every `INLET_*` variable the code reads is in the README's configuration table;
- the README stays a ten-minute read (under 400 lines);
- no diary wording ("this session", "the fifth session", "we tried") in the README, docs/,
  bench/README.md or the names of the files under docs/ and bench/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "proto" / "inlet" / "v1"
README = ROOT / "README.md"
GRPC_API = ROOT / "docs" / "grpc-api.md"
CODE_DIRS = tuple(
    ROOT / package for package in ("service", "http_bridge", "inlet_app", "inlet_tools")
)
MAX_README_LINES = 400

_RPC = re.compile(r"^\s*rpc\s+(\w+)\s*\(", re.MULTILINE)
_SERVICE = re.compile(r"^service\s+(\w+)\s*\{(.*?)^\}", re.MULTILINE | re.DOTALL)
_ENV = re.compile(r"\bINLET_[A-Z0-9_]+\b")
# The supervisor's hand-over to its workers (service/worker.py), not settings.
_INTERNAL_ENV_PREFIX = "INLET_WORKER_"
_DIARY = re.compile(
    r"\b(?:this|that|previous|next|last|earlier|later|first|second|"
    r"third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)\s+(?:work\s+)?sessions?(?:'s)?\b"
    r"(?!\s+(?:state|timeout|preload|variable))"
    r"|\bsessions?\s*\d|\bsession\d|\bwe\s+(?:tried|measured|found|decided)\b",
    re.IGNORECASE,
)


def proto_rpcs(proto_dir: Path) -> dict[str, list[str]]:
    """Each service of the protos with its RPC names."""
    services: dict[str, list[str]] = {}
    for proto in sorted(proto_dir.glob("*.proto")):
        for name, body in _SERVICE.findall(proto.read_text()):
            services[name] = _RPC.findall(body)
    return services


def unnamed_rpcs(services: dict[str, list[str]], doc: str) -> list[str]:
    """`Service.Rpc` for each RPC the document never names in backquotes."""
    return [
        f"{service}.{rpc}"
        for service, rpcs in services.items()
        for rpc in rpcs
        if f"`{rpc}`" not in doc and f"`{service}.{rpc}`" not in doc
    ]


def env_vars_read(dirs: tuple[Path, ...]) -> set[str]:
    """Every INLET_* name in the code's Python files, the workers' hand-over left out."""
    found: set[str] = set()
    for directory in dirs:
        for source in directory.rglob("*.py"):
            found.update(_ENV.findall(source.read_text()))
    return {name for name in found if not name.startswith(_INTERNAL_ENV_PREFIX)}


def configuration_table(readme: str) -> str:
    """The README's configuration section: from its heading to the next one."""
    match = re.search(r"^## Configuration\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Configuration' section"
    return match.group(1)


def undocumented_env(names: set[str], table: str) -> list[str]:
    return sorted(name for name in names if not re.search(rf"`{name}(?:=[^`]*)?`", table))


def diary_phrases(text: str) -> list[str]:
    return [match.group(0) for match in _DIARY.finditer(text)]


def user_docs() -> list[Path]:
    return [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_rpc_of_the_protos_is_named_in_the_grpc_api_doc() -> None:
    services = proto_rpcs(PROTOS)
    assert {"EventService", "ProfileService", "AdminService"} <= set(services)
    assert sum(len(rpcs) for rpcs in services.values()) >= 16
    assert unnamed_rpcs(services, GRPC_API.read_text()) == []


def test_the_rpc_check_notices_an_omission() -> None:
    services = proto_rpcs(PROTOS)
    doc = re.sub(r"`(?:AdminService\.)?WhoAmI`", "who am I", GRPC_API.read_text())
    assert unnamed_rpcs(services, doc) == ["AdminService.WhoAmI"]


def test_every_inlet_variable_the_code_reads_is_in_the_readme_configuration_table() -> None:
    names = env_vars_read(CODE_DIRS)
    assert {"INLET_DATABASE_URL", "INLET_MAX_INFLIGHT_BATCHES", "INLET_PG_POOL_SIZE"} <= names
    assert undocumented_env(names, configuration_table(README.read_text())) == []


def test_the_variable_check_notices_an_omission() -> None:
    table = configuration_table(README.read_text()).replace("`INLET_MAX_PENDING`", "")
    assert undocumented_env(env_vars_read(CODE_DIRS), table) == ["INLET_MAX_PENDING"]


def test_the_workers_hand_over_variables_left_out_are_the_supervisors_own() -> None:
    worker = (ROOT / "service" / "worker.py").read_text()
    everywhere = set()
    for directory in CODE_DIRS:
        for source in directory.rglob("*.py"):
            everywhere.update(_ENV.findall(source.read_text()))
    internal = {name for name in everywhere if name.startswith(_INTERNAL_ENV_PREFIX)}
    assert internal and all(f'"{name}"' in worker for name in internal)


def test_the_readme_is_a_short_read() -> None:
    lines = README.read_text().count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_no_diary_wording_in_the_docs_or_their_file_names() -> None:
    found = {
        str(path.relative_to(ROOT)): phrases
        for path in user_docs()
        if (phrases := diary_phrases(path.read_text()))
    }
    assert found == {}
    names = [p.name for d in ("docs", "bench") for p in (ROOT / d).iterdir()]
    assert [name for name in names if "session" in name.lower()] == []


def test_the_diary_check_notices_diary_wording_and_spares_postgresql_sessions() -> None:
    assert diary_phrases("Measured in the fifth session: 0.25.") == ["fifth session"]
    assert diary_phrases("this session's run") == ["this session's"]
    assert diary_phrases("baseline-session4.json") == ["session4"]
    assert diary_phrases("We tried two pools.") == ["We tried"]
    assert diary_phrases("set idle_in_transaction_session_timeout; a session ends") == []
    assert diary_phrases("Inlet leaves no session state to reset") == []
