# dentalmim clinical service image (also carries the CLI).
#
# CPU (default):
#   docker build -t dentalmim .
# NVIDIA GPU: a CUDA runtime base (Ubuntu 24.04, Python 3.12) and the CUDA build of torch 2.13.0:
#   docker build -t dentalmim:gpu \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Run (model and data on the host; create a key first, it is printed once):
#   docker run --rm -v /srv/dentalmim:/data dentalmim:gpu keys create --role clinician
#   docker run -d --gpus all -p 8000:8000 -v /srv/dentalmim:/data \
#     -e DENTALMIM_MODEL_PATH=/data/models/caries.safetensors --env-file configs/service.env.example dentalmim:gpu
# The host needs the NVIDIA driver and the NVIDIA container toolkit for --gpus. /srv/dentalmim must be writable
# by uid 10001 (the image's non-root user).

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# CUDA bases ship no Python: install the distribution's (3.12 on Ubuntu 24.04, within requires-python)
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
      rm -rf /var/lib/apt/lists/*; fi && \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip && pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dentalmim ./dentalmim
COPY service ./service
RUN pip install .

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*; fi && \
    useradd --create-home --uid 10001 dentalmim && mkdir -p /data && chown dentalmim /data && chmod 700 /data
COPY --from=build /opt/venv /opt/venv
COPY configs /app/configs
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 \
    DENTALMIM_CONFIGS=/app/configs DENTALMIM_DATA_DIR=/data DENTALMIM_HOST=0.0.0.0 DENTALMIM_PORT=8000
WORKDIR /app
USER dentalmim
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"
# `docker run IMAGE` serves; `docker run IMAGE keys create --role clinician` (or any other subcommand) runs the CLI.
ENTRYPOINT ["dentalmim"]
CMD ["serve"]
