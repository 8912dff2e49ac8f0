"""Inlet's HTTP bridge: Segment's webhook in, batched gRPC calls to the core out."""
