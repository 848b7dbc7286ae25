"""Users, roles, password hashing, JWT access tokens, login throttling. Imports only ``core``."""
