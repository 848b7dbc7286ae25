"""Nodes, jobs and what they need: the ORM models and one package per domain.

This is the one package where the database, the ledger and the runs meet; it is split by
domain (jobs, nodes, dispatch, accounts, billing, storage), with the ORM models and the
visibility rule shared at its top."""
