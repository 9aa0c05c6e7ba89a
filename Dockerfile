# syntax=docker/dockerfile:1
# lossreg service images.
#   docker build -t lossreg:gpu .                 CUDA build of PyTorch on an nvidia/cuda runtime base
#   docker build -t lossreg:cpu --target cpu .    CPU build of PyTorch on python:slim
#   --build-arg EXTRA_PACKAGES="my-losses==1.2"   bakes third-party loss plugins in
# Every install command lives in .ci/container-install.sh; CI runs the same script with --check.
# The service binds LOSSREG_HOST:LOSSREG_PORT (0.0.0.0:8000); `-e LOSSREG_PORT=9000` moves the server
# and the HEALTHCHECK together. gRPC listens on LOSSREG_GRPC_PORT (8001; 0 turns it off).

# Pin CUDA and PyTorch together: TORCH_INDEX_URL must serve TORCH_VERSION built for CUDA_VERSION's
# major.minor (cu130 <-> 13.0); the torch step fails the build when they disagree.
ARG PYTHON_VERSION=3.12
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---- build: the lossreg wheel -------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
COPY .ci/container-install.sh /usr/local/bin/lossreg-install
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN lossreg-install wheel /src /wheels

# ---- cpu: `docker build --target cpu .` for machines without GPUs ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL
ENV PATH=/opt/lossreg/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOSSREG_HOST=0.0.0.0 \
    LOSSREG_PORT=8000 \
    LOSSREG_GRPC_PORT=8001 \
    LOSSREG_DEVICE=cpu
COPY .ci/container-install.sh /usr/local/bin/lossreg-install
COPY deploy/docker/healthcheck.py /usr/local/bin/lossreg-healthcheck
RUN lossreg-install system \
    && lossreg-install torch /opt/lossreg "${TORCH_VERSION}" "${TORCH_CPU_INDEX_URL}"
# Declared after the torch layer so changing the plugins does not reinstall torch.
ARG EXTRA_PACKAGES=""
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    lossreg-install app /opt/lossreg /wheels "${EXTRA_PACKAGES}"
USER 10001
WORKDIR /home/lossreg
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/lossreg-healthcheck"]
ENTRYPOINT ["lossreg"]
CMD ["serve"]

# ---- gpu (the default target): CUDA runtime + the matching CUDA build of PyTorch -----------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS gpu
ARG CUDA_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# LOSSREG_DEVICE=auto: one compute worker per visible GPU; or name them (cuda:0,cuda:1).
ENV PATH=/opt/lossreg/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOSSREG_HOST=0.0.0.0 \
    LOSSREG_PORT=8000 \
    LOSSREG_GRPC_PORT=8001 \
    LOSSREG_DEVICE=auto
COPY .ci/container-install.sh /usr/local/bin/lossreg-install
COPY deploy/docker/healthcheck.py /usr/local/bin/lossreg-healthcheck
RUN lossreg-install system \
    && lossreg-install torch /opt/lossreg "${TORCH_VERSION}" "${TORCH_INDEX_URL}" "${CUDA_VERSION}"
ARG EXTRA_PACKAGES=""
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    lossreg-install app /opt/lossreg /wheels "${EXTRA_PACKAGES}"
USER 10001
WORKDIR /home/lossreg
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/lossreg-healthcheck"]
ENTRYPOINT ["lossreg"]
CMD ["serve"]
