"""The FastAPI gateway. Imports everything; nothing imports it."""
