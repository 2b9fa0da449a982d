# itsproxy: an OpenAI-compatible inference-time-scaling proxy.
# Runs as a non-root user on a read-only root filesystem: the only writable place is
# /var/lib/itsproxy (a volume), the working directory, where config.yaml's relative
# `.itsproxy/...` paths (state_dir, traces) land.
#   docker run --read-only --tmpfs /tmp -e ITS_API_KEY=... -p 4100:4100 itsproxy
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    LITELLM_OFFLINE_MODE=true \
    LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True \
    LITELLM_DISABLE_LATEST_RELEASE_CHECK=true

RUN useradd --create-home --uid 10001 its
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
COPY strategies ./strategies
RUN pip install . && rm -rf build

COPY config.yaml /app/config.yaml
RUN mkdir -p /var/lib/itsproxy && chown its:its /var/lib/itsproxy
VOLUME ["/var/lib/itsproxy"]
WORKDIR /var/lib/itsproxy
USER its

EXPOSE 4100
# The key clients must present; config.yaml reads it as os.environ/ITS_API_KEY.
ENV ITS_API_KEY=""
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4100/health', timeout=2).status == 200 else 1)"

# uvicorn drains on SIGTERM: it stops accepting, lets in-flight requests finish, then exits.
STOPSIGNAL SIGTERM
CMD ["itsproxy", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0", "--port", "4100"]
