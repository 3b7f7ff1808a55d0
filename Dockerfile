# pollinid service image: ONNX Runtime on CUDA (falls back to the CPU without a GPU), no PyTorch.
#
#   docker build -t pollinid .
#   docker run --gpus all -p 8000:8000 -v pollinid-data:/data pollinid
#
# onnxruntime-gpu 1.31 needs CUDA 13.x and cuDNN 9 (its error message says so when they are missing),
# which the cudnn-runtime base image provides. Keep ONNXRUNTIME_GPU_VERSION and the base in step.

ARG CUDA_IMAGE_TAG=13.0.0-cudnn-runtime-ubuntu24.04
ARG BUILD_IMAGE_TAG=13.0.0-base-ubuntu24.04

# -- build: a virtual environment holding the service and its runtime dependencies --------------------
FROM nvidia/cuda:${BUILD_IMAGE_TAG} AS build
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image pins the OS release; its security updates come with the distribution's packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY training ./training
COPY models ./models
COPY frontend ./frontend
# The service alone: no [train] extra, so no PyTorch.
RUN pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" . \
    && python -c "import service.api.app, onnxruntime" \
    && ! python -c "import torch" 2>/dev/null

# -- runtime: CUDA + cuDNN libraries, the venv, a non-root user -------------------------------------
FROM nvidia/cuda:${CUDA_IMAGE_TAG} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POLLINID_DATA_DIR=/data \
    POLLINID_LOG_LEVEL=INFO
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pollinid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/pollinid --create-home pollinid \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/pollinid
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)"]
CMD ["pollinid", "serve", "--host", "0.0.0.0", "--port", "8000"]
