# The monitor's processes (worker, gateway, demo): `docker compose up` runs them (compose.yaml).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY worker ./worker
COPY web ./web
RUN pip install --no-cache-dir .

# Listen on every interface inside the container; compose publishes the port.
ENV MONITOR_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["monitor"]
CMD ["--help"]
