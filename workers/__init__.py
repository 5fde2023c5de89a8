"""Who consumes jobs: the RQ entry point, worker start-up, and one adapter per vendor."""
