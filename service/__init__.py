"""Inlet's core: validates, deduplicates and durably stores Segment events behind a gRPC API."""
