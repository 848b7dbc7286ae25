"""Audits of trainers that drive their own job (split): a sample of their checkpoints is
trained again on another node, outside the job's Ray cluster, by an audit job the gateway
creates; its credit waits for the verdict."""
