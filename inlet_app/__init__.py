"""The composition layer: the `inlet` command line (`cli.py`; `cli_read.py`, the read
commands over gRPC; `cli_admin.py`, the operator's commands on the database), the in-process
wiring of `inlet serve` (bridge and core in one process) and the `--workers` supervisor.

It is the only layer that imports both halves: `proto/` (inlet.v1) <- `service/` (the
core) <- `http_bridge/` (the HTTP side) <- `inlet_app/`, and `inlet_tools/` (send-test,
contract-test) beside them. tests/test_layers.py keeps it so.
"""
