# Image for the lychee-rerank-mm Streamlit app. Build and run it with `docker compose up --build`
# (see docs/deployment.md).
#
# A plain python:3.11-slim base is enough: the torch wheels from the package index bring their own
# CUDA runtime (the nvidia-* wheels), so no NVIDIA CUDA base image is needed. The host only needs
# the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    LYCHEE_CACHE=/cache/lychee-rerank \
    LYCHEE_MODEL=vec-ai/lychee-rerank-mm \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

# Unprivileged user; /cache is where the model-cache volume is mounted (a new named volume takes
# this directory's owner, so the app can write the downloaded weights there).
RUN groupadd --gid 1000 app \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin app \
    && mkdir -p /cache/huggingface \
    && chown -R app:app /cache

WORKDIR /app

# Dependencies first, in their own layer: editing the code does not reinstall torch.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root: the app user can read it, not change it.
COPY . .

# Numeric, so the runtime can tell it is not root without reading /etc/passwd.
USER 1000:1000

EXPOSE 8501

# Python's urllib, so the image needs no curl. A server that is down makes urlopen raise: exit 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=5)"]

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
