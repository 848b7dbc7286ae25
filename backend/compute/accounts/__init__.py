"""Accounts: creating users with their wallet and grant, and their life as admins manage them."""
