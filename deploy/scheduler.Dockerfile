# The scheduler image: jobwire with its database extra, running as an unprivileged user.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
RUN pip install --no-cache-dir '.[scheduler]' && rm -rf /src
RUN useradd --system --uid 10001 jobwire
USER 10001
EXPOSE 50051
ENV JOBWIRE_LISTEN=0.0.0.0:50051
ENTRYPOINT ["jobwire", "scheduler"]
