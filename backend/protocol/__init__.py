"""What the control plane (gateway) and the node side (agent, ray_module) say to each other:
small typed records shared by both, and their JSON form on the wire. It imports nothing of
ours, so either side can take it without the other."""
