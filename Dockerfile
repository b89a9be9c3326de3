# syntax=docker/dockerfile:1
# edgewatch for x86_64 hosts with an NVIDIA GPU: onnxruntime-gpu (CUDA 13, cuDNN 9) on NVIDIA's CUDA
# runtime image; needs driver 580 or newer and the NVIDIA Container Toolkit (docker run --gpus all).
# Without a GPU it runs on the CPU. Build: docker build -t edgewatch:gpu .   Run: docs/operators.md
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# The demo COCO model, converted from the public-domain Darknet weights. ONNX is portable: build it natively.
FROM --platform=$BUILDPLATFORM python:3.12-slim-bookworm AS model
WORKDIR /src
COPY constraints.txt ./
COPY models/build.py models/darknet.py models/
RUN pip install --no-cache-dir --constraint constraints.txt numpy onnx \
    && python models/build.py --out /model/yolov3-tiny-coco.onnx --cache-dir /tmp/model-cache

# The package and its pinned dependencies in a venv, built where pip and the sources may live.
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY daemon ./daemon
RUN python3 -m venv /opt/edgewatch/venv \
    && /opt/edgewatch/venv/bin/pip install --no-cache-dir --constraint constraints.txt ".[gpu]" \
    && /opt/edgewatch/venv/bin/pip install --no-cache-dir --no-deps --constraint constraints.txt trackers

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 edgewatch \
    && useradd --system --uid 10001 --gid edgewatch --groups video \
        --home-dir /var/lib/edgewatch --shell /usr/sbin/nologin edgewatch \
    && install -d -o edgewatch -g edgewatch -m 0750 /var/lib/edgewatch /var/lib/edgewatch/trt
COPY --from=build /opt/edgewatch/venv /opt/edgewatch/venv
COPY --from=model /model/yolov3-tiny-coco.onnx /opt/edgewatch/models/yolov3-tiny-coco.onnx
COPY systemd/config.example.toml /etc/edgewatch/config.toml
# Secrets come at run time: ${VAR} from the environment, the Roboflow key from a mounted secret file
# ($CREDENTIALS_DIRECTORY/roboflow_api_key, e.g. a Docker or Compose secret). `video` has the NVIDIA
# Container Toolkit mount the driver's decoder library too, for cameras with decoder = "cuda".
ENV PATH=/opt/edgewatch/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CREDENTIALS_DIRECTORY=/run/secrets \
    CUDA_CACHE_PATH=/var/lib/edgewatch/cuda-cache
USER 10001:10001
WORKDIR /var/lib/edgewatch
VOLUME ["/etc/edgewatch", "/var/lib/edgewatch"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["edgewatch"]
CMD ["run", "-c", "/etc/edgewatch/config.toml"]
