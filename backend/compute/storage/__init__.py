"""Storage: what jobs keep on disk, the artifact store for uploads from untrusted nodes, and
downloads of a finished job's model."""
