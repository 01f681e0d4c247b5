# Herald with its dashboard, for people with Docker. PostgreSQL comes from docker-compose.yml.
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
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md alembic.ini ./
COPY service/ service/
COPY migrations/ migrations/
RUN pip install --no-cache-dir .
COPY --from=frontend /app/frontend/dist frontend/dist
RUN useradd --system --no-create-home herald
USER herald
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
