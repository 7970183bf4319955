"""Celery side: the app, thin tasks over engine use cases, signals and the health server."""
