# itsproxy: an OpenAI-compatible inference-time-scaling proxy.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    LITELLM_OFFLINE_MODE=true

RUN useradd --create-home --uid 10001 its
WORKDIR /app

COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY strategies ./strategies
RUN pip install .

COPY config.yaml /app/config.yaml
RUN mkdir -p /app/state && chown its /app/state
USER its

EXPOSE 4100
# The key clients must present; config.yaml reads it as os.environ/ITS_API_KEY.
ENV ITS_API_KEY=""
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4100/health', timeout=2).status == 200 else 1)"

CMD ["itsproxy", "serve", "--config", "/app/config.yaml", "--host", "0.0.0.0", "--port", "4100"]
