# syntax=docker/dockerfile:1
#
# Image for the secrets service.
#   docker build -t secrets-service .
#   docker run -p 8000:8000 -e SECRETS_MASTER_KEYS=... -e API_KEY_HASH_KEY=... secrets-service
# Migrations are applied by `secrets-service serve` at startup.

# --- build stage: install the package and its dependencies into a venv ------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .

# --- runtime stage -----------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Unprivileged user with a fixed uid/gid (works with runAsNonRoot policies).
# /data is where docker-compose mounts the sqlite volume; /app/data is the
# service's default sqlite location (./data relative to the working dir).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/data /data \
    && chown -R app:app /app /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status == 200 else 1)"]

CMD ["secrets-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
