# One image for every mmesh process on Kubernetes: the controller
# (`mmesh controller`), the runtime pods' sidecar (`mmesh sidecar`), the
# runtime adapter (`python -m runtime_adapter ...`) and the built-in ONNX /
# TorchScript runtimes. The manifests choose the command; run alone it prints
# the CLI's help.
#
#   docker build -t mmesh:0.1.0 .
#   docker build --build-arg EXTRAS=k8s,torch -t mmesh:0.1.0 .    # + TorchScript
#   docker build --build-arg EXTRAS=k8s,gpu -t mmesh:0.1.0-gpu .   # + CUDA ONNX Runtime
#
# TORCH_INDEX_URL adds a pip index for torch wheels (e.g. a CPU-only build,
# far smaller than the default CUDA one).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=k8s
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the package needs
COPY . .
RUN python -m venv /opt/mmesh \
 && /opt/mmesh/bin/pip install --upgrade pip \
 && /opt/mmesh/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
# a numeric user, so Kubernetes' runAsNonRoot can verify it; group 0 and
# group-writable dirs so a random UID (OpenShift's restricted SCC) works too
RUN useradd --uid 1000 --gid 0 --home-dir /home/mmesh --create-home --shell /usr/sbin/nologin mmesh \
 && mkdir -p /models /storage-config /opt/mmesh \
 && chown 1000:0 /models && chmod g+rwx /models /home/mmesh
COPY --from=build /opt/mmesh /opt/mmesh
ENV PATH=/opt/mmesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mmesh
WORKDIR /home/mmesh
USER 1000
# ports the processes use by default: sidecar gRPC 8033, REST 8008, probes
# 8089, metrics 2112; adapter 8085; controller probes/metrics 8081
EXPOSE 8033 8008 8089 2112 8085 8081
ENTRYPOINT []
CMD ["mmesh", "--help"]
