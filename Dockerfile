# Three images from one file (README "Docker"):
#   runtime (the default)  amo[serve] only: onnxruntime + FastAPI, no torch; `amo serve` on the promoted
#                          bundle, non-root, /readyz as its health check
#     docker build -t amo-runtime .
#     docker run -p 8000:8000 -v /srv/amo/registry:/srv/amo/registry:ro -v amo-decisions:/srv/amo/decisions amo-runtime
#   train                  the whole pipeline (`make install`: CPU torch, every extra) for dvc repro,
#                          the Prefect flows and the tests
#     docker build --target train -t amo-train .
#   wheel                  builds amo's wheel for the runtime (nothing else uses it)
# No Docker daemon runs in this project's CI: tests/test_docker_stages.py runs the wheel and runtime
# stages' RUN lines, then CMD and HEALTHCHECK, in a fresh folder (tests/dockerfile_stages.py), and
# .ci/run runs `make install`, the train stage's one step. There, PIP_FIND_LINKS=/opt/wheels replaces
# the PyTorch index (build args below).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN useradd --create-home --uid 10001 amo

FROM base AS train
# torch's CPU wheel (the default index serves CUDA builds); or --build-arg PIP_FIND_LINKS=<wheel folder>
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN chown amo:amo /app
USER amo
COPY --chown=amo:amo . .
ENV PYTHON=python3.11 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false PATH=/app/.venv/bin:$PATH
RUN make install
CMD ["amo", "--help"]

FROM base AS wheel
ENV SRC=/src DIST=/dist
WORKDIR $SRC
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --quiet --no-deps --wheel-dir "$DIST" "$SRC"

FROM base AS runtime
ARG PIP_FIND_LINKS=
ENV VENV=/opt/amo DIST=/dist
COPY --from=wheel $DIST $DIST
RUN python -m venv "$VENV" && "$VENV/bin/pip" install --quiet --no-cache-dir "$(ls "$DIST"/amo-*.whl)[serve]"
# The registry is mounted (or AMO_REGISTRY names an s3:// or gs:// URL); bundles of a remote registry
# are downloaded into AMO_CACHE_DIR and verified there.
ENV PATH=/opt/amo/bin:$PATH AMO_REGISTRY=/srv/amo/registry AMO_CACHE_DIR=/tmp/amo-cache AMO_PORT=8000
# The decision log (docs/runtime.md): a folder the amo user owns, a volume so it outlives the
# container (-v amo-decisions:/srv/amo/decisions); AMO_DECISION_LOG= (empty) turns it off.
ENV AMO_DECISION_LOG=/srv/amo/decisions
RUN mkdir -p "$AMO_DECISION_LOG"
RUN chown amo:amo "$AMO_DECISION_LOG"
VOLUME /srv/amo/decisions
USER amo
WORKDIR /home/amo
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['AMO_PORT'] + '/readyz', timeout=2)"
CMD ["amo", "serve", "--host", "0.0.0.0"]
