# The same environment as `make install` (the steps .ci/run proves on a clean machine).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
ENV PYTHON=python3.11 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PATH=/app/.venv/bin:$PATH
RUN make install
CMD ["amo", "--help"]
