# convai-monitor as a container (a sidecar next to a game backend, or on its own).
#   docker build -t convai-monitor .
#   docker run -v monitor-data:/data -v ./config.yaml:/etc/convai-monitor/config.yaml:ro \
#     -e CONVAI_API_KEY -e VLLM_API_KEY convai-monitor
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY migrations ./migrations
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir '.[postgres]'

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin monitor \
 && mkdir -p /data /etc/convai-monitor && chown monitor /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CONVAI_MONITOR_CONFIG=/etc/convai-monitor/config.yaml \
    CONVAI_MONITOR_DB_URL=sqlite:////data/convai-monitor.db \
    CONVAI_MONITOR_LISTEN=0.0.0.0:9478
USER monitor
WORKDIR /data
# The SQLite database: storage.url sqlite:////data/convai-monitor.db (one instance; the example config
# reads it from CONVAI_MONITOR_DB_URL, and server.listen from CONVAI_MONITOR_LISTEN).
# Several instances share a postgresql+psycopg://... URL instead (the driver is installed).
VOLUME ["/data"]
# server.listen must be set to 0.0.0.0:9478 for the health check and Prometheus.
EXPOSE 9478
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9478/healthz', timeout=4).status == 200 else 1)"]
# Logs: JSON lines on stderr (no terminal in a container).
ENTRYPOINT ["convai-monitor"]
CMD ["run"]
