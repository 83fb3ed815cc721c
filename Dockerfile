# The monitor's processes (worker, gateway, demo): `docker compose up` runs them (compose.yaml).
# A build stage with a C compiler builds the wheel, which compiles the worker's pure core
# (docs/scale-out.md, The compiled core); the image itself holds Python and that wheel.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY monitor ./monitor
COPY worker ./worker
COPY web ./web
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The build keeps the source when it cannot compile; an image must not, silently.
RUN python -c "import monitor.compiled as c, worker.batch; assert c.in_use(), 'not compiled'"

# Listen on every interface inside the container; compose publishes the port.
ENV MONITOR_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["monitor"]
CMD ["--help"]
