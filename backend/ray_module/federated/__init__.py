"""Federated averaging on Ray: pure partitioning and aggregation, the client hosts (Ray
actors holding data shards) and the tasks they train (classifiers, text-to-text models)."""
