# syntax=docker/dockerfile:1
#
# Image for the secrets service. Dependencies come from requirements.lock, pinned by hash
# (`make lock` updates it), so two builds of one commit install the same files.
#
#   docker build -t secrets-service .
#   docker run --rm secrets-service secrets-service keys generate             # a SECRETS_MASTER_KEYS entry
#   docker run --rm secrets-service secrets-service keys generate --hash-key  # an API_KEY_HASH_KEY
#   docker run -d -p 127.0.0.1:8000:8000 -v secrets-data:/app/data \
#     -v "$PWD/secrets/master_keys:/run/secrets/master_keys:ro" \
#     -v "$PWD/secrets/api_key_hash_key:/run/secrets/api_key_hash_key:ro" \
#     -e SECRETS_MASTER_KEYS_FILE=/run/secrets/master_keys \
#     -e API_KEY_HASH_KEY_FILE=/run/secrets/api_key_hash_key \
#     -e KAFKA_BOOTSTRAP_SERVERS=kafka.internal:9092 \
#     secrets-service
# The SQLite file lives in /app/data (the default DATABASE_URL, from WORKDIR /app): keep it on a
# volume. The key files are read by the image's user, uid 10001 (scripts/compose-secrets makes
# them so). Migrations are applied by `secrets-service serve` at startup.

# --- build stage: install the package and its dependencies into a venv ------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The locked dependencies first (a layer that changes only with the lock), then the package alone.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY . .
# The client before the service, which depends on secrets-client (client/, not on PyPI) by name;
# the lock holds the dependencies of both. The client brings the sync agent, secrets-sync.
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./client
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

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
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status == 200 else 1)"]

CMD ["secrets-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
