"""The domain core of the AI Business Engine: no Flask, no Celery."""

__version__ = "0.1.0"
