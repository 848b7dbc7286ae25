"""What both sides know of each training mode: its settings (the knobs a job may set, with
their defaults and limits), and its rules (the model types and tasks it runs, how many
workers a job gets, what it asks beyond them, how its progress reads). The gateway checks and
places jobs with these; a node's strategy adds how to run them (``ray_module.strategies``)."""
