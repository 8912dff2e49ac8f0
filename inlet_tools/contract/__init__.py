"""`inlet contract-test`: check any deployed Segment Direct Destination endpoint.

Two parts, one report:

* scenarios.py — Segment's own contract, row by row (README's status contract):
  what a destination must answer, and what Segment then does with the answer.
* property_run.py — a Schemathesis property-based run of an OpenAPI spec
  (Inlet's `openapi.yaml`, shipped in `inlet_tools`, by default).

The contract is Segment's, not Inlet's: the scenarios assume nothing about the
endpoint beyond what Segment's partner documentation asks of every destination.
"""
