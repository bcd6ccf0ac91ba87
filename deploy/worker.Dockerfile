# The worker image: jobwire without any database driver (no `scheduler` extra), running as
# an unprivileged user. Build your own image FROM it with your handler package installed,
# and name the modules with JOBWIRE_IMPORTS or --import.
#   docker build -f deploy/worker.Dockerfile -t jobwire-worker .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
RUN pip install --no-cache-dir . && rm -rf /src
RUN groupadd --system --gid 10001 jobwire \
    && useradd --system --uid 10001 --gid 10001 --no-create-home jobwire
WORKDIR /
USER 10001:10001
# HTTP for /metrics, /healthz and /readyz; a worker listens on nothing else.
EXPOSE 8081
ENV JOBWIRE_WORKER_HTTP_PORT=8081
ENTRYPOINT ["jobwire", "worker"]
