"""A node's warm workers: Ray worker processes on the node's machine (of its own Ray, or of
the trusted pool it is a member of) that have imported torch before any job asks for them,
so that a job's actors start in a fraction of a second.

``pool``: the keeper (a detached actor on the node's machine, one per node) and its warm
workers; ``claim``: how a job's runner takes some for its actors; ``launch``: how the node's
agent starts the keeper (``python -m ray_module.warm``) once its Ray (or its pool member)
is up.
"""
