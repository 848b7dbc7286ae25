"""A node's warm workers: Ray worker processes of the node's own Ray that have imported torch
before any job asks for them, so that a job's actors start in a fraction of a second.

``pool``: the keeper (a detached actor on the node's Ray) and its warm workers; ``claim``:
how a job's runner takes some for its actors; ``launch``: how the node's agent starts the
keeper (``python -m ray_module.warm``) once its Ray is up.
"""
