# One image for every app process: api (gunicorn), worker, beat, flower, migrate.
# docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Editable install: the `engine` console script, celery, gunicorn and alembic then all
# import the one copy in /app, which is also where alembic.ini, migrations/, workflows/
# and web/gunicorn_conf.py are found (engine.config locates them from its own path).
COPY . .
RUN pip install --no-deps -e .

# Run as an unprivileged user. The state and log directories are created here, owned by
# that user, so that named volumes mounted on them inherit the ownership.
RUN groupadd --system engine \
    && useradd --system --gid engine --no-create-home --home-dir /var/lib/engine engine \
    && mkdir -p /var/lib/engine /var/log/engine \
    && chown engine:engine /var/lib/engine /var/log/engine
USER engine

ENV LOG_DIR=/var/log/engine
EXPOSE 8000 8080 5555

CMD ["gunicorn", "-c", "web/gunicorn_conf.py", "web:create_app()"]
