"""Dispatch: the dispatcher loop and its pure policy, the scheduler (placement and its
database side), the leader lease, and the runs on the nodes' agents."""
