"""The double-entry token ledger: accounts, transactions, entries, pricing, settlement.

Imports only ``core``. Users, jobs and nodes are referenced by id, not by foreign key, so the
ledger stands on its own (as TigerBeetle's user_data fields do)."""
