"""Peer baselines (RQ, Celery) for the no-op work-queue items/s benchmark."""
