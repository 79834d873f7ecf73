# The Spillway app image: every stage worker (`faust -A app worker`, stage chosen by
# SPILLWAY_STAGE), the `spillway` CLI and the provider simulator. See docs/deployment.md.
#
#   docker build -t spillway .
#   docker run --rm -e SPILLWAY_STAGE=render -e SPILLWAY_KAFKA_BOOTSTRAP=kafka:9092 \
#       -e SPILLWAY_SCHEMA_REGISTRY_URL=http://registry:8080/apis/ccompat/v7 spillway
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/spillway

# Dependencies first, from pyproject.toml alone: this layer survives code changes.
# (All of them ship manylinux wheels, confluent-kafka with librdkafka inside: no compiler.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The app. Editable install: templates/ and schemas/ are found next to app/ (PROJECT_ROOT).
COPY README.md ./
COPY app ./app
COPY simulator ./simulator
COPY schemas ./schemas
COPY templates ./templates
RUN pip install --no-deps -e . \
 && useradd --system --uid 10001 --home-dir /var/lib/spillway --create-home spillway

# Faust keeps table state under ./<app id>-data: run from a writable directory.
USER spillway
WORKDIR /var/lib/spillway
ENV SPILLWAY_WEB_HOST=0.0.0.0 \
    SPILLWAY_STAGE=all

# Web ports by stage: all 6066, render 6067, route 6068, dispatch 6069, analyser 6070,
# intake 8080 (SPILLWAY_WEB_PORT overrides).
EXPOSE 6066 6067 6068 6069 6070 8080

# /health of this worker's web server (stdlib only: a cheap check; the ports are
# app.factory.WEB_PORTS, which tests/deploy/test_compose.py holds this line to).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request as u; ports = {'all': 6066, 'render': 6067, 'route': 6068, 'dispatch': 6069, 'analyser': 6070, 'intake': 8080}; port = os.environ.get('SPILLWAY_WEB_PORT') or ports[os.environ.get('SPILLWAY_STAGE', 'all')]; u.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"

CMD ["faust", "-A", "app", "worker", "-l", "info"]
