# syntax=docker/dockerfile:1
# tfps images, CPU by default:
#   docker build -t tfps-server .                       the server (default target)
#   docker build --target worker -t tfps-worker .       the demo worker of docker-compose.yml
# GPU server (TensorFlow with its CUDA libraries; run with the NVIDIA container runtime):
#   docker build --build-arg TENSORFLOW="tensorflow[and-cuda]" -t tfps-server:gpu .
# The server listens on all interfaces of the container and, without the files below, is
# open: anyone who reaches the port can read and overwrite the model. Run it with mutual TLS
# and tokens by mounting what deploy/make-secrets.sh writes, read-only (SECURITY.md):
#   deploy/make-secrets.sh ./secrets my-host.example.com
#   sudo chown -R 10001:10001 secrets/server       # the server runs as uid 10001
#   docker run -p 50051:50051 -v "$PWD/secrets/server:/etc/tfps:ro" --env-file tls.env tfps-server
# where tls.env holds the four variables that point the server at the files:
#   TFPS_TLS_CERT=/etc/tfps/tls.crt, TFPS_TLS_KEY=/etc/tfps/tls.key,
#   TFPS_TLS_CLIENT_CA=/etc/tfps/ca.crt, TFPS_AUTH_TOKENS_FILE=/etc/tfps/tokens (one a line)
# The HEALTHCHECK reads the same TFPS_TLS_* variables and keeps working over TLS.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: a virtual environment with the pinned dependencies, outside the final images.
FROM ${PYTHON_IMAGE} AS build
ARG TENSORFLOW=tensorflow
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.txt README.md ./
COPY client/ client/
COPY server/ server/
RUN python -m venv /opt/tfps \
    && /opt/tfps/bin/pip install --no-cache-dir --constraint requirements.txt \
        "${TENSORFLOW}" ./client ./server

FROM build AS worker-build
RUN /opt/tfps/bin/pip install --no-cache-dir --constraint requirements.txt scikit-learn

# What both final images share: an unprivileged user and the environment's PATH.
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --no-log-init --create-home --uid 10001 --user-group tfps \
    && mkdir -p /var/lib/tfps/checkpoints \
    && chown -R tfps:tfps /var/lib/tfps
ENV PATH=/opt/tfps/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /home/tfps

FROM runtime AS worker
COPY --from=worker-build /opt/tfps /opt/tfps
COPY examples/ /opt/tfps-examples/
USER 10001:10001
ENTRYPOINT ["python", "/opt/tfps-examples/worker.py"]

# The server, last so that it is the default target.
FROM runtime AS server
COPY --from=build /opt/tfps /opt/tfps
COPY deploy/docker/healthcheck.py /opt/tfps/healthcheck.py
ENV TFPS_HOST=0.0.0.0 \
    TFPS_METRICS_PORT=9464 \
    TFPS_CHECKPOINT_DIR=/var/lib/tfps/checkpoints
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "/opt/tfps/healthcheck.py"]
ENTRYPOINT ["tfps-server"]
