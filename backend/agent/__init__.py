"""The node agent (`distlm-node`): registers this machine with a DistLM gateway, waits for
approval, joins the Ray cluster as a worker and sends heartbeats until stopped.

It imports nothing of the gateway's packages: a node machine needs only httpx, psutil and
ray. `cli` parses the command line; `loop.run_agent` is the run itself, built from
`gateway_client`, `machine`, `credentials`, `registration` and `ray_worker`."""
