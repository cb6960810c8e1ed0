# Joinbridge in a container: `docker build -t joinbridge .`, then see docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package only: no dev extras (pytest, ruff, mypy, playwright), no tests.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
RUN pip install . && rm -rf /src

# A dedicated user that owns nothing but the database volume.
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home \
        --shell /usr/sbin/nologin joinbridge \
    && mkdir -p /data \
    && chown joinbridge:joinbridge /data
WORKDIR /app

# The database (with its -wal/-shm files) lives on the volume, so an upgrade keeps it.
VOLUME ["/data"]
ENV DATABASE_PATH=/data/joinbridge.db \
    TRACKER_HOST=0.0.0.0 \
    TRACKER_PORT=8080
# TRACKER_HOST=0.0.0.0 so the published port reaches the tracker inside the
# container; publish it on the host's loopback (-p 127.0.0.1:8080:8080) behind
# your proxy. Secrets (BOT_TOKEN, ADTARGET_API_KEY) come at run time:
# `docker run --env-file .env`, never baked into the image.
EXPOSE 8080

USER joinbridge

# SIGTERM stops polling and hands unsent rows back to the queue within
# SHUTDOWN_GRACE (5 s); docker's default 10 s stop timeout leaves room for it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRACKER_PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "bot"]
