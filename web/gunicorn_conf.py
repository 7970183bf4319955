"""gunicorn settings for the API (environment: API_PORT, WEB_CONCURRENCY)."""

import os

bind = f"{os.environ.get('API_BIND', '0.0.0.0')}:{os.environ.get('API_PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 10
