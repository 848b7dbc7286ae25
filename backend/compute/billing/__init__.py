"""Billing: where jobs meet the ledger (prices, holds, settlement), usage and its metering, and
what each job has cost. Nothing here imports the dispatcher."""
