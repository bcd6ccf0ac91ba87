# The scheduler image: jobwire with its database extra, running as an unprivileged user.
#   docker build -f deploy/scheduler.Dockerfile -t jobwire-scheduler .
# The same image runs the migrations: docker run jobwire-scheduler ... with the entrypoint
# `jobwire migrate`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
# The checkout itself with its extra, versions as pyproject.toml allows (not a PyPI name).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[scheduler]' && rm -rf /src
RUN groupadd --system --gid 10001 jobwire \
    && useradd --system --uid 10001 --gid 10001 --no-create-home jobwire
WORKDIR /
USER 10001:10001
# gRPC for producers and workers; HTTP for /metrics, /healthz and /readyz.
EXPOSE 50051 8080
ENV JOBWIRE_LISTEN=0.0.0.0:50051 \
    JOBWIRE_HTTP_PORT=8080
ENTRYPOINT ["jobwire", "scheduler"]
