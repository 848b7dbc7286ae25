"""The node agent (`distlm-node`): registers this machine with a DistLM gateway, waits for
approval, joins the Ray cluster as a worker and sends heartbeats until stopped."""
