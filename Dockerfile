# ratesvc: ShipStation rates and labels for Cin7 Core. Configure with RATESVC_* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RATESVC_HOST=0.0.0.0 \
    RATESVC_PORT=8080 \
    RATESVC_DATA_DIR=/var/lib/ratesvc

RUN useradd --system --uid 10001 --home-dir /var/lib/ratesvc --shell /usr/sbin/nologin ratesvc \
    && mkdir -p /var/lib/ratesvc \
    && chown ratesvc:ratesvc /var/lib/ratesvc

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ratesvc ./ratesvc
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER ratesvc
EXPOSE 8080
VOLUME ["/var/lib/ratesvc"]

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RATESVC_PORT', '8080') + '/healthz', timeout=2)"

CMD ["ratesvc", "serve"]
