# dentalmim image. Default: CPU torch. For NVIDIA GPUs build with the CUDA wheel index of torch 2.13.0, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t dentalmim .
#   docker run --gpus all -p 8000:8000 dentalmim
# (the CUDA libraries ship inside the torch wheel; the host needs the NVIDIA driver and container toolkit).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 PIP_NO_CACHE_DIR=1 \
    DENTALMIM_CONFIGS=/app/configs

RUN useradd --create-home --uid 1000 dentalmim
WORKDIR /app

RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY dentalmim ./dentalmim
COPY service ./service
COPY configs ./configs
RUN pip install .

USER dentalmim
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["uvicorn", "service.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
