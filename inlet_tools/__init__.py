"""Client tools for testing any Segment destination, Inlet or not: `inlet send-test`
(`send_test.py`, with Segment's sample events in `samples/`) and `inlet contract-test`
(`contract/`, with Inlet's `openapi.yaml`).

They talk HTTP to a deployment and know nothing of the server's code: they import no
`service/` or `http_bridge/` module (tests/test_layers.py keeps it so), and `inlet_app/`
wires them into the command line.
"""
