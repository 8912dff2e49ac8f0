"""buf on Inlet's gRPC contract (proto/, configured by proto/buf.yaml).

buf comes from the `@bufbuild/buf` npm package (it ships the binary), installed with
npm at an exact version into a cache folder, so every machine lints and compares
with the same rules.

    python scripts/buf.py lint              # proto/buf.yaml's lint rules
    python scripts/buf.py breaking          # compatible with the last release?
    python scripts/buf.py release [VERSION] # at a release: record its contract
    python scripts/buf.py which             # the installed buf, for `buf generate`

The last release is the newest image in proto/releases/ (`v<version>.binpb`, made by
`buf build`): committed, so a clean clone checks against it without any git history
or tag. `release` writes one for VERSION (default: pyproject.toml's version); commit
it with the release, and from then on `breaking` holds changes to that contract.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"
RELEASES = PROTO / "releases"
#: Exact: lint rules and breaking checks change between buf releases.
BUF_VERSION = "1.75.0"


class BufUnavailable(RuntimeError):
    """node or npm is not installed, so buf cannot be."""


def install_folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "inlet" / f"buf-{BUF_VERSION}"


@functools.cache
def ensure_buf() -> Path:
    """The pinned buf, installed with npm on first use."""
    folder = install_folder()
    buf = folder / "node_modules" / ".bin" / "buf"
    if buf.exists() and _version(buf) == BUF_VERSION:
        return buf
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise BufUnavailable("buf is installed from npm: Node.js (node and npm) is needed")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"private": true}\n')
    subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"@bufbuild/buf@{BUF_VERSION}",
        ],
        cwd=folder,
        check=True,
        timeout=300,
    )
    if _version(buf) != BUF_VERSION:
        raise RuntimeError(f"npm installed {buf}, which is not buf {BUF_VERSION}")
    return buf


def _version(buf: Path) -> str:
    result = subprocess.run(
        [buf, "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    return result.stdout.strip()


def version_key(image: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", image.stem))


def last_release() -> Path:
    """The newest release image in proto/releases/."""
    images = sorted(RELEASES.glob("v*.binpb"), key=version_key)
    if not images:
        raise FileNotFoundError(f"no release image in {RELEASES}: `buf.py release` makes one")
    return images[-1]


def run(*args: str | Path, proto: Path = PROTO) -> subprocess.CompletedProcess[str]:
    """buf ARGS in a module folder (proto/ or a copy of it); output captured."""
    return subprocess.run(
        [ensure_buf(), *args], check=False, cwd=proto, capture_output=True, text=True, timeout=120
    )


def lint(proto: Path = PROTO) -> subprocess.CompletedProcess[str]:
    return run("lint", proto=proto)


def breaking(proto: Path = PROTO, against: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run("breaking", "--against", against or last_release(), proto=proto)


def release(version: str) -> Path:
    """Write proto/releases/v<version>.binpb: the contract as it is now."""
    RELEASES.mkdir(exist_ok=True)
    image = RELEASES / f"v{version}.binpb"
    # Imports (the well-known types) are kept: an image is compared on its own.
    result = run("build", "--output", image)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return image


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "lint" and not rest:
        result = lint()
    elif command == "breaking" and not rest:
        print(f"against {last_release().relative_to(ROOT)}")
        result = breaking()
    elif command == "release" and len(rest) <= 1:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        version = rest[0] if rest else pyproject["project"]["version"]
        print(f"wrote {release(version.removeprefix('v')).relative_to(ROOT)}")
        return 0
    elif command == "which" and not rest:
        print(ensure_buf())
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode == 0:
        print(f"buf {command}: ok")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
