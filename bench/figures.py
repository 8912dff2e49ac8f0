"""The benchmark's figures, from the phases bench/mix.py measured: pure functions.

Each figure compares two setups measured in the same round (the ratio taken within the
round, then the median over rounds), beside the target issue 18 sets for it.
"""

from __future__ import annotations

import statistics
from typing import Any

#: The benchmark's mix, the same without its deletes, and the plain track load
#: (bench/events.py's MIXES).
MIX, NO_DELETES, TRACK = "profiles", "profiles-no-deletes", "track"


def label(store: str, kind: str, mix: str, connections: int, cores: int) -> str:
    """`postgresql profiles c32 x2`, `sqlite track c32`, `postgresql grpc`, …: `cores`
    0 is one `inlet serve`, N ≥ 1 is N `serve core` + N `serve bridge` (` xN`)."""
    if kind != "http":
        return f"{store} {kind}"
    name = f"{store} {mix} c{connections}"
    return name if cores == 0 else f"{name} x{cores}"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def figures(
    phases: list[dict[str, Any]], connections: int, many: int, cores: list[int]
) -> dict[str, Any]:
    """The comparisons the benchmark is for, from the phases of every round: each is the
    median over rounds of the ratio taken within a round, beside the issue's target; None
    where its phases were not run."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for p in phases:
        by.setdefault(p["label"], {})[p["round"]] = p

    def medians(name: str) -> dict[str, Any] | None:
        mine = list(by.get(name, {}).values())
        if not mine:
            return None
        out: dict[str, Any] = {"events_per_s": _median([p["events_per_s"] for p in mine])}
        if mine[0]["kind"] == "http":
            for key in ("p50_ms", "p99_ms", "shed_share"):
                out[key] = _median([p[key] for p in mine])
        out["cpu_us_per_event"] = {
            part: _median([p["cpu_us_per_event"].get(part) for p in mine])
            for part in mine[0]["cpu_us_per_event"]
        }
        return out

    def ratio(top: str, bottom: str, target: float | None) -> dict[str, Any] | None:
        rounds = sorted(set(by.get(top, {})) & set(by.get(bottom, {})))
        if not rounds:
            return None
        per_round = [
            by[top][n]["events_per_s"] / max(by[bottom][n]["events_per_s"], 1e-9) for n in rounds
        ]
        value = statistics.median(per_round)
        if target is None:  # reported for what it shows, against no target
            return {"ratio": value, "rounds": per_round}
        return {
            "ratio": value,
            "rounds": per_round,
            "target": f">= {target}",
            "met": value >= target,
        }

    def http(store: str, mix: str, conns: int = connections, n: int = 0) -> str:
        return label(store, "http", mix, conns, n)

    out: dict[str, Any] = {}
    for mix in (MIX, TRACK):
        compared = ratio(http("postgresql", mix), http("sqlite", mix), 0.8)
        if compared is not None:
            pg = medians(http("postgresql", mix))
            assert pg is not None
            compared.update(
                postgresql=pg,
                sqlite=medians(http("sqlite", mix)),
                p99_target_ms=25,
                p99_met=pg["p99_ms"] <= 25,
            )
        out[f"webhook_pg_to_sqlite_{mix}"] = compared
    for store in ("sqlite", "postgresql"):
        compared = ratio(http(store, MIX), http(store, NO_DELETES), 0.8)
        if compared is not None:
            compared.update(
                with_deletes=medians(http(store, MIX)),
                without_deletes=medians(http(store, NO_DELETES)),
            )
        out[f"deletes_{store}"] = compared
    compared = ratio(http("postgresql", MIX, many), http("postgresql", MIX), 1.0)
    if compared is not None:
        compared.update(
            connections=many,
            base_connections=connections,
            measured=medians(http("postgresql", MIX, many)),
            no_retry_after=sum(
                p["no_retry_after"] for p in by[http("postgresql", MIX, many)].values()
            ),
        )
    out["many_connections_pg"] = compared
    compared = ratio("postgresql grpc", "postgresql ceiling", 0.5)
    if compared is not None:
        ceiling = list(by["postgresql ceiling"].values())
        compared.update(
            grpc=medians("postgresql grpc"),
            ceiling=medians("postgresql ceiling"),
            ceiling_statement_ms_p50=_median([p["load"]["statement_ms"]["p50"] for p in ceiling]),
        )
    out["grpc_to_pg_ceiling"] = compared
    per_cores: dict[str, Any] = {}
    for n in sorted(set(cores)):
        name = http("postgresql", MIX, connections, n)
        measured = medians(name)
        if measured is None:
            continue
        samples = [p["backends"] for p in by[name].values() if "backends" in p]
        if samples:
            states = {s for sample in samples for s in sample["states"]}
            measured["backends"] = {
                "busy_backends_mean": _median([s["busy_backends_mean"] for s in samples]),
                "lock_wait_share": _median(
                    [
                        sum(v["share"] for k, v in s["states"].items() if k.startswith("Lock:"))
                        for s in samples
                    ]
                ),
                "share_of_busy_time": {
                    state: _median([s["states"].get(state, {}).get("share", 0.0) for s in samples])
                    for state in sorted(states)
                },
            }
        if n != 1:
            # More cores against one, in the same topology: what scaling out adds.
            measured["to_1_core"] = ratio(name, http("postgresql", MIX, n=1), 1.0)
        # Against one `inlet serve`, which has no gRPC hop: what the split costs.
        measured["to_one_process"] = ratio(name, http("postgresql", MIX), None)
        per_cores[str(n)] = measured
    out["cores_pg"] = per_cores or None
    return out


def checks(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """What must hold whatever the figures: integrity, clean exits, only 200 and 503
    (with Retry-After) for the webhook."""
    unexpected = {
        p["label"]: bad
        for p in phases
        if (bad := {s: n for s, n in p.get("statuses", {}).items() if s not in (200, 503)})
    }
    return {
        "integrity_ok": all(p["integrity"]["ok"] for p in phases),
        "exits_clean": all(code == 0 for p in phases for code in p.get("exit_codes", [])),
        "unexpected_statuses": unexpected,
        "shed_without_retry_after": sum(p.get("no_retry_after", 0) for p in phases),
    }


def setups_summary(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setup: medians over rounds of its rate and latency."""
    by: dict[str, list[dict[str, Any]]] = {}
    for p in phases:
        by.setdefault(p["label"], []).append(p)
    return {
        name: {
            key: _median([p.get(key) for p in mine])
            for key in ("events_per_s", "p50_ms", "p99_ms")
            if key in mine[0]
        }
        for name, mine in by.items()
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def readable(figs: dict[str, Any]) -> list[str]:
    """The figures as lines to read."""

    def rate(m: dict[str, Any] | None) -> str:
        if m is None:
            return "-"
        per_s = f"{_fmt(m['events_per_s'], 0)}/s"
        if "p50_ms" not in m:
            return per_s
        return f"{per_s} p50/p99 {_fmt(m['p50_ms'], 1)}/{_fmt(m['p99_ms'], 1)} ms"

    lines = []
    for key, fig in figs.items():
        if fig is None:
            lines.append(f"{key}: not measured")
            continue
        if key == "cores_pg":
            for n, m in fig.items():
                cpu, to_1 = m["cpu_us_per_event"], m.get("to_1_core")
                alone = m.get("to_one_process")
                lines.append(
                    f"cores_pg x{n}: "
                    + (f"{_fmt(to_1['ratio'])} x 1 core ({to_1['target']}), " if to_1 else "")
                    + (f"{_fmt(alone['ratio'])} x one inlet serve, " if alone else "")
                    + f"{rate(m)}, CPU/event Inlet {_fmt(cpu['inlet'], 0)} us + PostgreSQL "
                    f"{_fmt(cpu['postgres_backends'], 0)} us"
                    + (
                        f", lock waits {_fmt(100 * m['backends']['lock_wait_share'], 1)} % of "
                        "busy backend time"
                        if "backends" in m
                        else ""
                    )
                )
            continue
        head = f"{key}: {_fmt(fig['ratio'])} ({fig['target']})"
        if "postgresql" in fig:
            lines.append(
                f"{head}; PostgreSQL {rate(fig['postgresql'])} (p99 <= 25 ms), "
                f"SQLite {rate(fig['sqlite'])}"
            )
        elif "with_deletes" in fig:
            lines.append(
                f"{head}; with {rate(fig['with_deletes'])}, without {rate(fig['without_deletes'])}"
            )
        elif "measured" in fig:
            m = fig["measured"]
            lines.append(
                f"{head}; {fig['connections']} connections {rate(m)}, shed "
                f"{_fmt(100 * m['shed_share'], 1)} % (503 without Retry-After: "
                f"{fig['no_retry_after']})"
            )
        else:
            lines.append(f"{head}; IngestBatch {rate(fig['grpc'])}, ceiling {rate(fig['ceiling'])}")
    return lines
