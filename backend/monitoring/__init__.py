"""Metrics queries over the registry, the queue and (later) the ledger. Imports ``core`` and reads
``compute`` models."""
