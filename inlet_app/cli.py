"""The `inlet` command line: serve, manage API keys, check a deployment's contract."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import prometheus_client

from http_bridge.config import BridgeConfig
from http_bridge.server import BridgeServer, start_bridge
from inlet_app import cli_admin, cli_read
from inlet_app.in_process import InProcessCore
from inlet_app.supervisor import Supervisor, worker_count
from inlet_tools.contract.config import ContractConfig
from inlet_tools.contract.report import render_text, write_junit
from inlet_tools.contract.runner import run_contract_test
from inlet_tools.send_test import SAMPLE_FILES, run_load, run_once, sample, settings_header
from service import logs
from service.config import CoreConfig, env_bool, open_configured_store, split_list
from service.metrics import SAMPLER, count_worker
from service.server import CoreServer, start_core, stop_on_signal
from service.store import Store, StoreError
from service.timestamps import parse_duration_s
from service.worker import WorkerContext, die_with_parent, pin_to_cpu

log = logging.getLogger("inlet")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inlet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database",
        help="SQLite path or postgresql:// DSN (env INLET_DATABASE_URL)",
    )

    serve = commands.add_parser(
        "serve", parents=[database], help="run the service (default: core and bridge together)"
    )
    serve.add_argument("part", nargs="?", choices=("all", "core", "bridge"), default="all")
    serve.add_argument(
        "--workers",
        help="worker processes, each a whole `inlet serve` on the same ports and database: "
        "a number or `auto` (one per CPU) (env INLET_WORKERS, default 1)",
    )
    serve.add_argument(
        "--pin-workers",
        action="store_true",
        default=None,
        help="with --workers: run each worker on a CPU of its own, for a machine Inlet has "
        "to itself (env INLET_PIN_WORKERS; docs/scaling.md)",
    )
    serve.add_argument(
        "--grpc", dest="grpc_listen", help="core gRPC host:port (env INLET_CORE_LISTEN)"
    )
    serve.add_argument("--core", help="core address for `serve bridge` (env INLET_CORE)")
    serve.add_argument("--host", help="bridge host (env INLET_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="bridge port (env INLET_PORT, default 8080)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (env INLET_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key (env INLET_TLS_KEY)")
    serve.add_argument(
        "--max-body-bytes", type=int, help="request body limit (env INLET_MAX_BODY_BYTES)"
    )
    serve.add_argument(
        "--types", help="accepted call types, comma-separated (env INLET_SUPPORTED_TYPES)"
    )
    serve.add_argument(
        "--rate-limit",
        type=float,
        dest="rate_limit",
        help="events/s per API key, 0 = none (env INLET_RATE_LIMIT_PER_KEY)",
    )
    serve.add_argument(
        "--no-fsync",
        action="store_true",
        help="synchronous=NORMAL: faster, but a power cut may lose acknowledged events",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        dest="trusted_proxies",
        metavar="CIDR",
        help="believe X-Forwarded-For/-Proto from this proxy address or range; repeatable "
        "(env INLET_TRUSTED_PROXIES, comma-separated)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="`serve core`: Prometheus metrics on this port (env INLET_METRICS_PORT); "
        "the bridge serves them on /metrics",
    )
    serve.add_argument(
        "--grpc-tls-cert", help="core: PEM certificate for gRPC over TLS (env INLET_GRPC_TLS_CERT)"
    )
    serve.add_argument("--grpc-tls-key", help="core: its PEM key (env INLET_GRPC_TLS_KEY)")
    serve.add_argument(
        "--grpc-client-ca",
        help="core: require client certificates signed by "
        "this PEM CA, mTLS (env INLET_GRPC_CLIENT_CA)",
    )
    serve.add_argument(
        "--core-tls-ca",
        help="bridge: reach the core over TLS, trusting this PEM CA (env INLET_CORE_TLS_CA)",
    )
    serve.add_argument(
        "--core-tls-cert",
        help="bridge: PEM client certificate for the core (env INLET_CORE_TLS_CERT)",
    )
    serve.add_argument("--core-tls-key", help="bridge: its PEM key (env INLET_CORE_TLS_KEY)")
    serve.add_argument(
        "--retention",
        help="core: delete events received longer ago than "
        "this, at least 1d: 30d, 90d (env INLET_RETENTION; default: keep all)",
    )
    serve.add_argument(
        "--log-traits",
        action="store_true",
        default=None,
        help="log trait values with each event (env INLET_LOG_TRAITS=1)",
    )

    cli_admin.register(commands, database)
    cli_read.register(commands)

    contract = commands.add_parser(
        "contract-test",
        help="check a deployed Segment destination endpoint (needs the `contract` extra)",
    )
    contract.add_argument("--url", required=True, help="the webhook URL, e.g. https://host/segment")
    contract.add_argument("--key", required=True, help="a valid API key for that endpoint")
    contract.add_argument("--settings", help="partner settings to send, as a JSON object")
    contract.add_argument("--spec", type=Path, help="OpenAPI spec (default: Inlet's, shipped)")
    contract.add_argument("--junit-xml", type=Path, help="also write a JUnit XML report here")
    contract.add_argument("--max-examples", type=int, default=50, help="per Schemathesis phase")
    contract.add_argument("--seed", type=int, help="Schemathesis's seed, to replay a run")
    contract.add_argument("--cacert", help="CA bundle to trust for the endpoint's certificate")
    contract.add_argument("--scenarios-only", action="store_true", help="skip the Schemathesis run")

    send = commands.add_parser(
        "send-test",
        help="play Segment: send sample events with Segment's headers and show both sides",
    )
    send.add_argument(
        "--url", required=True, help="the webhook URL, e.g. http://127.0.0.1:8080/segment"
    )
    send.add_argument("--key", required=True, help="the API key, sent as Segment sends it")
    send.add_argument("--settings", help="partner settings, as a JSON object")
    send.add_argument(
        "--type",
        default="all",
        choices=("all", *SAMPLE_FILES),
        help="which sample event to send (default: one of each)",
    )
    send.add_argument("--file", type=Path, help="send this JSON event instead of a sample")
    send.add_argument("--count", type=int, help="send this many events (load mode, with a summary)")
    send.add_argument(
        "--rate",
        type=float,
        default=0,
        help="events per second with --count (0: as fast as possible)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    worker = WorkerContext.from_env(os.environ)
    level = os.environ.get("INLET_LOG_LEVEL", "INFO")
    if worker is None:
        logs.configure(level)
    else:
        logs.configure(level, json=worker.log_json, worker=worker.index)
    try:
        if args.command == "serve":
            count = worker_count(args.workers or os.environ.get("INLET_WORKERS"))
            if worker is None and count > 1:
                return _supervise(args, count, sys.argv[1:] if argv is None else list(argv))
            _run(_serve(args, worker))
            return 0
        if args.command == "contract-test":
            return contract_test(args)
        if args.command == "send-test":
            return send_test(args)
        if args.command in ("profile", "events"):
            return _run(cli_read.run(args))
        return _run(_admin(args))
    except (ValueError, StoreError, OSError) as exc:
        print(f"inlet: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(main: object) -> int:
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            return asyncio.run(main)  # type: ignore[arg-type]
        return uvloop.run(main)  # type: ignore[arg-type]
    finally:
        # Lines logged in the loop's last moments wait for a timer that will not fire
        # now (logs.LineBatchingHandler): out with them before anything else is printed.
        logs.flush()


def core_config(args: argparse.Namespace) -> CoreConfig:
    return CoreConfig.from_env(
        os.environ,
        database=args.database,
        listen=args.grpc_listen,
        supported_types=split_list(args.types) if args.types else None,
        durable=False if args.no_fsync else None,
        rate_limit_per_key=args.rate_limit,
        metrics_port=args.metrics_port,
        grpc_tls_cert=args.grpc_tls_cert,
        grpc_tls_key=args.grpc_tls_key,
        grpc_client_ca=args.grpc_client_ca,
        log_traits=args.log_traits,
        retention_s=parse_duration_s(args.retention) if args.retention else None,
    )


def reload_tls_on_sighup(bridge: BridgeServer | None, core: CoreServer | None) -> None:
    """SIGHUP re-reads the certificate files (after a renewal), like nginx: the bridge's
    HTTPS one, the files a bridge reaches its core with, and the core's gRPC one,
    whichever this process uses."""

    def reload() -> None:
        if bridge is not None:
            reaches_core_over_tls = bridge.config.core_tls_ca is not None
            if bridge.tls is not None or not reaches_core_over_tls:
                bridge.reload_tls()  # logs that there is nothing to reload, when plain
            if reaches_core_over_tls:
                bridge.reload_core_tls()
        if core is not None and (core.tls is not None or bridge is None):
            core.reload_tls()  # logs that there is nothing to reload, when serving plain

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


#: Collections of the youngest generation every this many net allocations (Python's
#: default is 700): a request allocates a few dozen containers that live until its
#: answer, so the default collects every few dozen requests for nothing.
GC_THRESHOLD: Final = (50_000, 20, 10)


def tune_gc() -> None:
    """Once started: what exists now (modules, config, caches) lives as long as the
    process, so it leaves the collector's view (`gc.freeze`), and young collections
    run less often. Worth 7-20 % events/s in the benchmark (bench/, A/B)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def bridge_config(args: argparse.Namespace, core_target: str | None) -> BridgeConfig:
    return BridgeConfig.from_env(
        os.environ,
        core_target=core_target,
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_body_bytes=args.max_body_bytes,
        trusted_proxies=tuple(args.trusted_proxies) if args.trusted_proxies else None,
        core_tls_ca=args.core_tls_ca,
        core_tls_cert=args.core_tls_cert,
        core_tls_key=args.core_tls_key,
    )


def _supervise(args: argparse.Namespace, count: int, argv: list[str]) -> int:
    """`inlet serve --workers N` (N > 1): check the settings here, so that a mistake is
    said once, then run the supervisor (inlet_app/supervisor.py)."""
    if args.part != "all":
        raise ValueError("--workers is for `inlet serve` (core and bridge together)")
    core = core_config(args)
    if core.metrics_port is not None:
        raise ValueError("--metrics-port: with --workers the bridge's /metrics shows them all")
    bridge = bridge_config(args, None)
    logs.configure(os.environ.get("INLET_LOG_LEVEL", "INFO"), worker=0)  # its lines: worker 0
    scheme = "https" if bridge.tls_cert else "http"
    try:
        pin = args.pin_workers or env_bool(os.environ.get("INLET_PIN_WORKERS", "0"))
    except ValueError as exc:
        raise ValueError(f"INLET_PIN_WORKERS: {exc}") from None
    supervisor = Supervisor(count, argv, f"{bridge.host}:{bridge.port}", core.listen, scheme, pin)
    try:
        return asyncio.run(supervisor.run())
    finally:
        logs.flush()


async def _serve(args: argparse.Namespace, worker: WorkerContext | None = None) -> None:
    core = None
    bridge = None
    # Installed first: a SIGTERM while starting stops the process once it serves.
    stop = stop_on_signal()
    # One registry for the process (with Python's process and GC collectors): in
    # `inlet serve` the bridge's /metrics shows the core's metrics too. Workers of
    # `--workers` keep their values in prometheus_client's multiprocess files.
    registry = prometheus_client.REGISTRY
    background: list[asyncio.Task[None]] = []
    try:
        if worker is not None:
            die_with_parent(os.environ)
            if worker.cpu is not None:
                pin_to_cpu(worker.cpu)
            count_worker(registry, worker.replaces)
        if args.part in ("all", "core"):
            settings = core_config(args)
            if worker is not None:
                settings = dataclasses.replace(settings, reuse_port=True, sibling_writers=True)
            core = await start_core(settings, registry=registry, worker=worker)
        if args.part in ("all", "bridge"):
            target = args.core
            if core is not None:
                target = f"127.0.0.1:{core.port}"
            config = bridge_config(args, target)
            if core is None:
                bridge = await start_bridge(config, registry=registry)
            else:  # same process: no gRPC hop between bridge and core
                local = InProcessCore(core, config.retry_after_s)
                bridge = await start_bridge(config, lambda _: local, registry, worker)
        reload_tls_on_sighup(bridge, core)
        tune_gc()
        if worker is not None:
            background.append(asyncio.create_task(SAMPLER.follow(), name="inlet-sampler"))
            worker.announce_ready()
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        for task in background:
            task.cancel()
        # Bridge first: it stops accepting and flushes its batches into the core,
        # which is still serving; then the core drains and closes the store.
        if bridge is not None:
            await bridge.stop()
        if core is not None:
            await core.stop()
    log.info("stopped")


def contract_test(args: argparse.Namespace) -> int:
    """Run Segment's contract against a live endpoint; 0 when everything passed."""
    settings = settings_header(args.settings)
    config = ContractConfig(
        url=args.url,
        api_key=args.key,
        settings=settings,
        spec=args.spec,
        max_examples=args.max_examples,
        seed=args.seed,
        cacert=args.cacert,
        skip_property_run=args.scenarios_only,
    )
    with tempfile.TemporaryDirectory(prefix="inlet-contract-") as work:
        report = run_contract_test(config, Path(work))
        print(render_text(report, args.url))
        if args.junit_xml:
            write_junit(report, args.junit_xml)
    return 0 if report.passed else 1


def send_test(args: argparse.Namespace) -> int:
    """0 when every answer was a 2xx."""
    settings = settings_header(args.settings)
    if args.file:
        events = [json.loads(args.file.read_text())]
    else:
        kinds = list(SAMPLE_FILES) if args.type == "all" else [args.type]
        events = [sample(kind) for kind in kinds]
    if args.count:
        ok = asyncio.run(
            run_load(args.url, args.key, settings, events, args.count, args.rate, sys.stdout)
        )
    else:
        ok = asyncio.run(run_once(args.url, args.key, settings, events, sys.stdout))
    return 0 if ok else 1


def _database(args: argparse.Namespace) -> Store:
    return open_configured_store(CoreConfig.from_env(os.environ, database=args.database))


async def _admin(args: argparse.Namespace) -> int:
    """`keys`, `accounts`, `maintenance`, `prune`, `migrate`: on the database directly."""
    store = _database(args)
    await store.open(migrate=args.command != "migrate")
    try:
        return await cli_admin.run(store, args)
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
