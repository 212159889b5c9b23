# sftp-gateway: the SFTP server (default) or the notifier (command: notifier).
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /srv/sftp-gateway gateway
WORKDIR /srv/sftp-gateway

COPY pyproject.toml README.md ./
COPY sftp_gateway ./sftp_gateway
RUN pip install --no-cache-dir . && rm -rf /root/.cache

COPY config/gateway.example.yaml ./config/gateway.example.yaml
# Host keys are generated here on first start; mount a volume to keep them.
RUN mkdir -p keys && chown gateway: keys
USER gateway

ENV SFTP_GATEWAY_CONFIG=/srv/sftp-gateway/config/gateway.yaml
EXPOSE 2222
ENTRYPOINT ["sftp-gateway"]
CMD ["serve"]
