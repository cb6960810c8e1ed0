# Joinbridge in a container: `docker build -t joinbridge .`, then see docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime dependencies first, read from pyproject.toml alone: this layer is
# rebuilt when they change, not at every change to the code. No dev extras
# (pytest, ruff, mypy, playwright), no tests.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt

# Then the package itself, its dependencies already there; pip check fails the
# build if pyproject.toml asks for something the layer above did not install.
COPY README.md LICENSE ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
RUN pip install --no-deps . && pip check && rm -rf /src

# A dedicated user that owns nothing but the database volume. USER is numeric so
# that a runtime (Kubernetes' runAsNonRoot) can tell it is not root without
# reading /etc/passwd.
RUN groupadd --system --gid 10001 joinbridge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home \
        --shell /usr/sbin/nologin joinbridge \
    && mkdir -p /data \
    && chown 10001:10001 /data
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

USER 10001:10001

# SIGTERM stops polling and hands unsent rows back to the queue within
# SHUTDOWN_GRACE (5 s); docker's default 10 s stop timeout leaves room for it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRACKER_PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "bot"]
