"""Nodes: the registry (registration, approval, heartbeats), their life as owners and admins
manage them, what owners send, and the gateway's own machine as a node."""
