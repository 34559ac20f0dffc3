# batch-orchestrator: the `orchestrator` command in an image (daemon, migrate, emulator, CLI).
#
#   docker build -t batch-orchestrator .
#   docker run --rm -e ORCHESTRATOR_DATABASE_URL=postgresql://... batch-orchestrator migrate
#   docker run -d -p 127.0.0.1:9464:9464 --env-file orchestrator.env batch-orchestrator
#
# docker-compose.yml (next to this file) runs PostgreSQL, the migration and the daemon together.
# Checked by tests/deploy/test_docker.py (hadolint; every COPY source exists; non-root; no dev
# extras; the health check's address matches ORCHESTRATOR_HTTP_ADDR).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package and its runtime dependencies only (not the [dev] or [embedded] extras): pip builds
# the wheel from these sources, which are then removed.
COPY pyproject.toml README.md /tmp/src/
COPY orchestrator/ /tmp/src/orchestrator/
COPY migrations/ /tmp/src/migrations/
RUN pip install /tmp/src && rm -rf /tmp/src

# A fixed, non-root uid (Kubernetes' runAsNonRoot can check a numeric USER).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/orchestrator --create-home \
        --shell /usr/sbin/nologin orchestrator
USER 10001:10001
WORKDIR /var/lib/orchestrator

# /healthz and /metrics on every interface of the container (publish the port as you see fit);
# JSON logs on stdout.
ENV ORCHESTRATOR_HTTP_ADDR=0.0.0.0:9464 \
    ORCHESTRATOR_LOG_FORMAT=json
EXPOSE 9464

# 200 while the daemon ticks and reaches its database; 503 (or no answer) otherwise. The image has
# no curl: Python's urllib raises on a 503, which makes the check fail.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]

# SIGTERM (docker stop) drains: running steps finish within shutdown_grace_seconds (30 s), so
# give the container more than that (docker stop -t 45; compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["orchestrator"]
CMD ["run"]
