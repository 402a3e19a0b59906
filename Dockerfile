# The head-end image: one Python environment with the `headend` command (migrate, ingest,
# simulate, ...). Built by docker-compose.yml; every service picks its sub-command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# uv from PyPI, pinned to the version that wrote uv.lock
RUN pip install --no-cache-dir "uv==0.13.9"

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md .python-version ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself (its packages only; tests and tools stay out of the image).
COPY headend ./headend
COPY prepay_engine ./prepay_engine
COPY protocols ./protocols
COPY simulators ./simulators
RUN uv sync --frozen --no-dev --no-editable

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin headend
# Where `headend broker-config` writes the broker's configuration in docker-compose.yml: owned by
# uid 1883, the eclipse-mosquitto image's mosquitto user, which the broker-config service runs as.
# An empty named volume mounted here takes this ownership.
RUN mkdir /broker && chown 1883:1883 /broker
USER headend

ENV PATH="/app/.venv/bin:$PATH"
ENTRYPOINT ["headend"]
CMD ["--help"]
