"""The contract-test report: readable text for people, JUnit XML for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from inlet_tools.contract.runner import ContractReport
from inlet_tools.contract.scenarios import Outcome

_BODY_CHARS = 100


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").replace("\n", " ")
    return text if len(text) <= _BODY_CHARS else text[:_BODY_CHARS] + "…"


def _line(outcome: Outcome) -> str:
    verdict = "PASS" if outcome.passed else "FAIL"
    status = "---" if outcome.status is None else str(outcome.status)
    line = f"  {verdict}  {outcome.scenario.name:<24} {status:>3} {outcome.consequence:<10} "
    line += _snippet(outcome.body) if outcome.passed else "; ".join(outcome.problems)
    if not outcome.passed:
        line += f"\n        sent: {outcome.scenario.description}"
        if outcome.status is not None:
            line += f"\n        got:  {outcome.content_type or 'no Content-Type'} {_snippet(outcome.body)}"
    return line


def render_text(report: ContractReport, url: str) -> str:
    lines = [f"Segment Direct Destination contract: {url}", ""]
    lines += ["Segment conformance scenarios (status, what Segment then does, answer):"]
    lines += [_line(outcome) for outcome in report.outcomes]
    passed = sum(outcome.passed for outcome in report.outcomes)
    lines.append("")
    if report.property_run is not None:
        run = report.property_run
        lines.append(
            f"Property-based run (Schemathesis): {'PASS' if run.passed else 'FAIL'}: {run.summary}"
        )
        if not run.passed:
            tail = run.output.strip().splitlines()[-60:]
            lines += ["", *("    " + line for line in tail), ""]
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(
        f"{verdict}: {passed}/{len(report.outcomes)} scenarios passed"
        + (
            ""
            if report.property_run is None
            else f"; property-based run {'passed' if report.property_run.passed else 'failed'}"
        )
    )
    return "\n".join(lines)


def write_junit(report: ContractReport, path: Path) -> None:
    suites = ET.Element("testsuites", name="inlet contract-test")
    failures = sum(not outcome.passed for outcome in report.outcomes)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="segment-conformance",
        tests=str(len(report.outcomes)),
        failures=str(failures),
    )
    for outcome in report.outcomes:
        case = ET.SubElement(
            suite, "testcase", classname="segment-conformance", name=outcome.scenario.name
        )
        if not outcome.passed:
            failure = ET.SubElement(case, "failure", message="; ".join(outcome.problems))
            failure.text = (
                f"sent: {outcome.scenario.description}\n"
                f"got: {outcome.status} {outcome.content_type} {_snippet(outcome.body)}"
            )
    run = report.property_run
    if run is not None:
        if run.junit is not None:
            # Schemathesis's own report: one test case per operation, with its failures.
            suites.extend(ET.parse(run.junit).getroot().iter("testsuite"))
        else:
            extra = ET.SubElement(
                suites,
                "testsuite",
                name="property-based",
                tests="1",
                failures="0" if run.passed else "1",
            )
            case = ET.SubElement(extra, "testcase", classname="property-based", name="schemathesis")
            if not run.passed:
                ET.SubElement(case, "failure", message=run.summary).text = run.output[-5000:]
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
