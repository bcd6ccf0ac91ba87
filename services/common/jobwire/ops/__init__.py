"""What both services offer operators: structured logs and the HTTP endpoints for
metrics and probes. Free of database imports, so workers can use it."""
