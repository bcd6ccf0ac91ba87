# The worker image: jobwire without any database driver, running as an unprivileged user.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
RUN pip install --no-cache-dir . && rm -rf /src
RUN useradd --system --uid 10001 jobwire
USER 10001
ENTRYPOINT ["jobwire", "worker"]
