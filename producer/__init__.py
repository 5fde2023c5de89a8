"""Who enqueues: the Python API other services call, and the thin click CLI on top of it."""
