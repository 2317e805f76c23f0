# flowserve: the serving image (default target) and a training image (--target train).
#
#   docker build -t flowserve .                                   # serve: no torch, about 250 MB
#   docker run --rm -p 8000:8000 flowserve                         # the bundled default model
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" flowserve   # your model repository
#   docker build --target train --build-arg TORCH_SPEC=torch==2.13.0 -t flowserve-train .
#   docker run --rm -v "$PWD:/work" -w /work flowserve-train flowserve train ...
#   (the train target is opt-in through TORCH_SPEC, see its stage below and docs/docker.md)
#
# Classic-builder syntax only (no RUN --mount, COPY --chmod or heredocs), so it builds with or
# without BuildKit.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a virtual environment with the serving dependencies and flowserve itself ----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages stand in for the sources), so that
# editing code does not re-download them. The stand-ins' build/ directory must go too: setuptools
# would otherwise reuse its empty modules for the real install below.
COPY pyproject.toml README.md ./
RUN mkdir -p flowserve models service clients/python/flowserve_client \
 && touch flowserve/__init__.py models/__init__.py service/__init__.py \
          clients/python/flowserve_client/__init__.py \
 && pip install ".[serve]" \
 && pip uninstall -y flowserve \
 && rm -rf flowserve models service clients build ./*.egg-info
# binutils, for the trim step's strip: in the builder only, so none of it reaches the runtime image.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY flowserve ./flowserve
COPY models ./models
COPY service ./service
COPY clients/python/flowserve_client ./clients/python/flowserve_client
# Checked from / so that the source tree in /src cannot shadow the installed package.
RUN pip install --no-deps . \
 && cd / && python -c "import flowserve.service.app, flowserve_client, flowserve; print('flowserve', flowserve.__version__)"
# The serving image installs nothing at run time: drop pip and setuptools from its environment.
RUN cp -a /opt/venv /opt/venv-serve \
 && /opt/venv-serve/bin/python -m pip uninstall -q -y pip setuptools
# Trim what serving never loads: test suites, headers and stubs, numpy's build tools, ONNX
# Runtime's onnx tooling and C API library, debug symbols (scripts/slim_venv.py lists it all; about
# 80 MB). Then check with the trimmed environment that the server, its native extensions and the
# offline /docs assets load, and that ONNX Runtime runs the bundled model (`flowserve verify`).
COPY scripts/slim_venv.py /tmp/slim_venv.py
RUN python /tmp/slim_venv.py /opt/venv-serve \
 && cd / && /opt/venv-serve/bin/python -c "import asyncio, httptools, uvloop, yaml; \
      import flowserve.service.app, flowserve_client, orjson, prometheus_client, watchfiles, websockets; \
      from flowserve.service.docs_offline import assets_dir; assert assets_dir(), 'no /docs assets'; \
      uvloop.new_event_loop().run_until_complete(asyncio.sleep(0)); \
      httptools.HttpRequestParser(object()).feed_data(b'GET / HTTP/1.1\\r\\n\\r\\n'); \
      assert yaml.load('a: 1', Loader=yaml.CSafeLoader) == {'a': 1}" \
 && for model in /src/flowserve/default_model/*/*/; do \
      /opt/venv-serve/bin/python -c "import sys; from flowserve.cli import main; sys.exit(main(['verify', sys.argv[1]]))" "$model" || exit 1; \
    done

# ---- base: what both runnable images share ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    FLOWSERVE_HOST=0.0.0.0 \
    FLOWSERVE_PORT=8000 \
    FLOWSERVE_WORKERS=1 \
    FLOWSERVE_MODEL_ROOT=/models \
    FLOWSERVE_LOG_LEVEL=info
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 flowserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/flowserve --create-home \
            --shell /usr/sbin/nologin flowserve
WORKDIR /home/flowserve

# ---- train: the serving image plus torch and the training extra ---------------------------------
# Opt-in, because Docker's classic builder builds every stage before the target, even for a plain
# `docker build .`: with TORCH_SPEC empty (the default) this stage installs nothing and costs
# nothing. Build the training image with
#   docker build --target train --build-arg TORCH_SPEC=torch==2.13.0 -t flowserve-train .
# PyPI's Linux torch wheels are CUDA builds (several GB with their nvidia-* dependencies); where
# the PyTorch CPU index is reachable add
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu     (about 1 GB in all)
# or point pip at a folder of wheels served over HTTP (e.g. a local CPU wheel of torch):
#   --build-arg PIP_FIND_LINKS=http://127.0.0.1:8765/
FROM builder AS train-builder
ARG TORCH_SPEC=
ARG TORCH_INDEX_URL=
# pip reads it from the environment; empty means PyPI only
ARG PIP_FIND_LINKS=
RUN if [ -n "$TORCH_SPEC" ]; then \
      pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
      && pip install ".[train]"; \
    else \
      echo "TORCH_SPEC is empty: skipping the training dependencies (see the Dockerfile)"; \
    fi

FROM base AS train
COPY --from=train-builder /opt/venv /opt/venv
USER 10001:10001
CMD ["flowserve", "--help"]

# ---- runtime (default): serve models from /models over HTTP ------------------------------------
FROM base AS runtime
COPY --from=builder /opt/venv-serve /opt/venv
# The bundled default model, so the image answers with nothing mounted; mount a model repository
# (<name>/<version>/ directories) over /models to serve your own.
COPY --from=builder --chown=10001:10001 /src/flowserve/default_model /models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLOWSERVE_PORT', '8000'), timeout=4)" || exit 1
CMD ["flowserve", "serve"]
