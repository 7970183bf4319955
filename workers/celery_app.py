"""The worker's Celery app: `celery -A workers.celery_app worker|beat|flower`."""

from __future__ import annotations

from workers.events import EventBatching
from workers.factory import make_celery
from workers.runtime import settings
from workers.timers import TimerSweep

app = make_celery(settings())
app.set_current()
app.steps["worker"].add(TimerSweep)
app.steps["consumer"].add(EventBatching)

import workers.signals  # noqa: E402,F401  (connects handlers)
import workers.tasks  # noqa: E402,F401  (registers tasks)
