# llmproxy container image: `python -m proxy serve` on 0.0.0.0:8000, config in /etc/proxy.
#
#   docker build -t llmproxy .
#   docker run --rm -p 8000:8000 -e PROXY_API_KEY=... -e OPENAI_API_KEY=... llmproxy
#
# Listening on 0.0.0.0 requires proxy keys (PROXY_API_KEY or server.api_keys): without one the
# proxy refuses to start. Mount your own tier table over /etc/proxy (a directory mount, not a
# subPath, so that ConfigMap updates reach the file and are reloaded).

# --- build: a virtual environment holding the package and its dependencies -----------------
FROM python:3.11.14-slim-trixie AS builder

# pip byte-compiles what it installs, so the image starts without compiling anything.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, read from the project metadata alone: this layer survives code changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --requirement /tmp/requirements.txt
COPY proxy ./proxy
# Not editable: the final image gets the package inside the venv, byte-compiled by pip, and
# pip itself is dropped since nothing installs at run time.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall --yes pip

# --- run: the slim base, the venv, a non-root user; no compiler, no pip cache ---------------
FROM python:3.11.14-slim-trixie

# A fixed numeric id, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 proxy \
    && useradd --system --no-log-init --no-create-home --uid 10001 --gid 10001 proxy

COPY --from=builder /opt/venv /opt/venv
COPY providers.yaml /etc/proxy/providers.yaml

# PYTHONSAFEPATH: `python -m` does not put the working directory on sys.path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_CONFIG=/etc/proxy/providers.yaml \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8000 \
    PROXY_LOG_FORMAT=json

USER 10001:10001
WORKDIR /etc/proxy
EXPOSE 8000

# Liveness only (the event loop answers); readiness is /readyz, for the orchestrator to probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8000'), timeout=2)"]

# SIGTERM drains: /readyz turns 503, requests in flight finish within shutdown_grace_seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["serve"]
