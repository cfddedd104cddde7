# The picker endpoint picker (EPP) image.
#
# Two stages: `build` installs the project and its runtime dependencies into a virtual environment at
# /opt/venv; the final stage copies only that environment onto the same base image. The result has no
# compiler, no pip, no pip cache and no source tree, runs as uid/gid 65532 and works with a read-only root
# filesystem (the only writable path it needs is /tmp, an emptyDir in manifests/base). The test doubles
# (picker/testing: fake model servers, the Envoy-like client, the Kubernetes API emulator) are left out by
# .dockerignore, so `picker demo` and `picker fake-server` are not in the image; they run from a checkout.

# Python 3.11 slim on Debian bookworm, pinned by version tag and by the digest of the multi-architecture
# image index, so both stages (and every rebuild) start from the same bytes. Bump tag and digest together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv

WORKDIR /src
# The build backend, pinned with hashes, in a throw-away environment; the wheel is built from it without build
# isolation, so nothing unpinned is fetched to build it. README.md is the package's readme and LICENSE its
# licence file: the build refuses to run without them.
COPY requirements-build.lock requirements-image.lock pyproject.toml README.md LICENSE ./
COPY picker/ picker/
COPY scoring/ scoring/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/dist .

# The runtime dependencies of pyproject.toml only (no test, lint or bench groups), every file checked against
# the hashes in requirements-image.lock, which pins the versions of requirements.lock. Then the wheel built
# above, and `pip check` proves the environment complete. pip compiles the bytecode here, so nothing needs to
# be written next to the sources at run time. Then pip itself leaves the environment: nothing installs
# packages in the running container. xds-protos ships an old copy of opentelemetry-proto's modules at the
# same paths (grpc/grpc#42926) and the install order decides whose files stay, so opentelemetry-proto's lock
# entry (with its hashes) is installed once more, alone and last: --tracing's OTLP exporter needs its files.
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements-image.lock \
 && sed -n '/^opentelemetry-proto==/,/# via/p' requirements-image.lock > /tmp/otel-proto.txt \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --force-reinstall -r /tmp/otel-proto.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/dist/picker-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools


FROM ${PYTHON_IMAGE}

# The source revision and release of the build (docker build --build-arg COMMIT=$(git rev-parse HEAD)
# --build-arg VERSION=v0.1.0 .). The EPP reports them as inference_extension_info{commit, build_ref}.
ARG COMMIT=""
ARG VERSION="0.1.0"

LABEL org.opencontainers.image.title="picker" \
      org.opencontainers.image.description="Endpoint picker (EPP) for the Kubernetes Gateway API Inference Extension" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.version="${VERSION}"

# The base image's own installers are not needed at run time either; the fixed uid/gid 65532 matches
# runAsUser/runAsGroup in manifests/base/deployment.yaml and gets a passwd entry so that libraries that
# look up the current user work.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 65532 picker \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin picker

COPY --from=build /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only, bytecode was compiled at build time.
# HOME and TMPDIR: the only writable location is /tmp.
ENV PATH="/opt/venv/bin:${PATH}" \
    PICKER_COMMIT="${COMMIT}" \
    PICKER_BUILD_REF="${VERSION}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp

# 9002 ext_proc gRPC (TLS by default), 9003 gRPC health (plaintext), 9090 /metrics. The admin API
# (/config, /debug/*) listens on 127.0.0.1:9091 inside the container and is not exposed.
EXPOSE 9002 9003 9090

ENTRYPOINT ["picker"]
CMD ["serve"]
