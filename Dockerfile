# sftp-gateway: the SFTP server (default) or the notifier (command: notifier).
#
# Reproducible: the base image is pinned by digest and every Python dependency by
# constraints.txt (the tested environment, deploy/freeze-constraints.py). No moto and no
# test tools: `sftp-gateway demo` is not in this image.
#
# To move the base to a newer python:3.11-slim (security fixes), look up its digest and
# pass it, or update the default below, then run the tests against the new image:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> -t sftp-gateway .
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --create-home --home-dir /srv/sftp-gateway gateway
WORKDIR /srv/sftp-gateway

COPY constraints.txt pyproject.toml README.md ./
COPY sftp_gateway ./sftp_gateway
# PIP_CONSTRAINT (not --constraint) also pins what the build step itself installs.
RUN PIP_CONSTRAINT=/srv/sftp-gateway/constraints.txt pip install . \
    && pip check \
    && rm -rf /root/.cache build

COPY config/gateway.example.yaml ./config/gateway.example.yaml
# Host keys are generated in keys/ on first start: mount a volume there to keep them.
RUN mkdir -p keys && chown gateway: keys
USER gateway

ENV SFTP_GATEWAY_CONFIG=/srv/sftp-gateway/config/gateway.yaml
EXPOSE 2222
# Healthy once the SSH server answers with its version line (costs no ban score).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 2222), 3); assert s.recv(8) == b'SSH-2.0-'"]
ENTRYPOINT ["sftp-gateway"]
CMD ["serve"]
