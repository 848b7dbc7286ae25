"""The execution engine on Ray. Imports nothing of ours but this package: it takes frozen config
dataclasses and emits plain records, so a worker machine needs only its dependencies."""
