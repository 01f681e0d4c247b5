# Herald with its dashboard. docker-compose.yml runs two of these behind nginx, on PostgreSQL
# (docs/deploy.md). Alone, without DATABASE_URL, it runs an embedded PostgreSQL in its data dir.
FROM node:20-bookworm-slim AS frontend
WORKDIR /app/frontend
COPY frontend/package.json frontend/package-lock.json ./
# The client package (@herald/client) is an npm workspace of the dashboard: npm ci links it.
COPY frontend/lib/package.json lib/
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM python:3.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HERALD_DATA_DIR=/var/lib/herald

# The pinned dependencies first, from the lock file, in a layer of their own that a code change keeps;
# then Herald itself without resolving anything again (--no-deps): the image holds exactly the lock.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md LICENSE CHANGELOG.md alembic.ini hatch_build.py ./
COPY service/ service/
COPY clients/python/herald_client/ clients/python/herald_client/
COPY migrations/ migrations/
COPY --from=frontend /app/frontend/dist frontend/dist
RUN pip install --no-cache-dir --no-deps .

# A non-root user that owns its data dir: the embedded PostgreSQL (when DATABASE_URL is unset), the
# generated token secret, and the retention archive (<data dir>/archive) are written there. A new named
# volume mounted on it copies this ownership, so the volume is writable too.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/herald --shell /usr/sbin/nologin herald \
    && mkdir -p /var/lib/herald \
    && chown herald:herald /var/lib/herald \
    && chmod 0700 /var/lib/herald
VOLUME ["/var/lib/herald"]
USER herald

EXPOSE 8000
# Ready, not only alive: the database answers, the LISTEN connection is up, not shutting down.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
