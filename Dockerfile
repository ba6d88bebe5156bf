# syntax=docker/dockerfile:1
# The server under granian (oidc_server/serve.py). Two stages: the first installs the pinned dependencies into a
# virtualenv; the final one copies that and the code onto a clean slim image, running as an
# unprivileged user. Every dependency ships manylinux wheels, so neither stage needs a compiler.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /app
# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer.
COPY pyproject.toml README.md ./
RUN mkdir oidc_server \
    && touch oidc_server/__init__.py \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall --yes oidc-server \
    && rm -rf oidc_server build oidc_server.egg-info
COPY oidc_server ./oidc_server
COPY migrations ./migrations
COPY .well-known-templates ./.well-known-templates
COPY alembic.ini ./
COPY deploy/healthcheck.py ./deploy/healthcheck.py
# Editable: the code stays at /app, where the server finds migrations/ and the templates
# beside its package (config.PROJECT_ROOT). Compiled now because /app is read-only at run time.
RUN /opt/venv/bin/pip install --no-deps --editable . \
    && /opt/venv/bin/python -m compileall -q oidc_server migrations

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    OIDC_KEYS_DIR=/var/lib/oidc/keys \
    INSTANCE_DIR=/var/lib/oidc/instance
# The keys folder is a volume shared by every replica; created here with the user's
# ownership so that a new named volume starts with it.
RUN groupadd --system --gid 10001 oidc \
    && useradd --system --uid 10001 --gid oidc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin oidc \
    && mkdir -p /var/lib/oidc/keys /var/lib/oidc/instance \
    && chown -R oidc:oidc /var/lib/oidc \
    && chmod 0700 /var/lib/oidc/keys
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "/health/ready"]
CMD ["python", "-m", "oidc_server.serve"]
