"""Jobs: the persistent queue and its service, the job spec, the state machine, the event
stream, results and the platform summary."""
