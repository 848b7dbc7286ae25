"""Settings, database plumbing, domain error base classes and logging. Imports nothing of ours."""
