"""Nodes and jobs: models, services, the job spec and the job state machine.

This is the one package where the database, the ledger and Ray meet."""
