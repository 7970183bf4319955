# One image for every app process: api (gunicorn), worker, beat, flower, migrate.
# docker-compose.yml picks the process with `command:`.
# Debian bookworm, pinned: its PostgreSQL client is 15, the server docker-compose.yml runs
# (a plain python:3.11-slim follows Debian's newest release, which ships another major).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# pg_dump and pg_restore of the server's major version, for `engine db backup|restore`
# (engine.pg_client looks in /usr/lib/postgresql/<major>/bin first).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Editable install: the `engine` console script, celery, gunicorn and alembic then all
# import the one copy in /app, which is also where alembic.ini, migrations/, workflows/
# and web/gunicorn_conf.py are found (engine.config locates them from its own path).
COPY . .
RUN pip install --no-deps -e .

# Run as an unprivileged user. The state, backup and log directories are created here,
# owned by that user, so that named volumes mounted on them inherit the ownership.
RUN groupadd --system engine \
    && useradd --system --gid engine --no-create-home --home-dir /var/lib/engine engine \
    && mkdir -p /var/lib/engine/backups /var/log/engine \
    && chown engine:engine /var/lib/engine /var/lib/engine/backups /var/log/engine
USER engine

ENV LOG_DIR=/var/log/engine
EXPOSE 8000 9101 8080 5555

CMD ["gunicorn", "-c", "web/gunicorn_conf.py", "web:create_app()"]
