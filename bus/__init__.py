"""The core every side shares: registry, message models, queue names, errors, settings.

Nothing in here imports click, RQ workers or a vendor protocol, so producers and workers
can both depend on it without depending on each other.
"""
