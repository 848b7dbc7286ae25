"""The node agent (`distlm-node`): registers this machine with a DistLM gateway, waits for
approval, starts the node's own Ray (or joins a trusted pool), runs the jobs placed on it and
sends heartbeats until stopped.

It imports nothing of the gateway's packages: a node machine needs only httpx, psutil and
ray. `cli` parses the command line; `loop.run_agent` is the run itself, built from
`gateway_client`, `machine`, `credentials`, `registration`, `own_ray`, `ray_worker`, `runs`
(the run follower) and `driver` (a job's driver process)."""
