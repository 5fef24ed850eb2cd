# WS-Hub gateway image: `docker build -t ws-hub .`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt ./requirements/
COPY gateway ./gateway
# The exact versions CI tested (requirements/constraints.txt), the package and what it needs.
RUN pip wheel --no-cache-dir --constraint requirements/constraints.txt --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wshub
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY hypercorn.docker.toml /app/hypercorn.toml
# Mount your own hypercorn.toml over /app/hypercorn.toml and the certificates on /app/certs.
RUN mkdir -p /app/certs && chown wshub /app/certs
USER wshub
EXPOSE 8443 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["ws-hub", "serve", "--config", "/app/hypercorn.toml"]
