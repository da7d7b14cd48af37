# One image for the API and the workers.
#   worker image (torch):      docker build -t clr-service .
#   slim API image (no torch): docker build --build-arg EXTRAS=service -t clr-service-api .
# The API never imports torch, so it runs from the slim image; workers need the "train" extra.
FROM python:3.11-slim

ARG EXTRAS="train,service"
# Optional extra package index for a CUDA-specific torch build; empty means the default index.
ARG PIP_EXTRA_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLR_ARTIFACT_DIR=/data/artifacts \
    CLR_DATA_DIR=/data/datasets

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY clrcore ./clrcore
COPY jobs ./jobs
COPY service ./service
COPY worker ./worker
RUN pip install -c constraints.txt ".[${EXTRAS}]" \
    && useradd --create-home --uid 1000 clr \
    && mkdir -p /data/artifacts /data/datasets \
    && chown -R clr /data

USER clr
EXPOSE 8000
# Workers override this with `python -m worker` (solo pool, queue from CLR_QUEUE).
# The API: uvicorn with the connection limits of jobs/settings.py (CLR_HTTP_*); 0.0.0.0 inside the
# container only, compose publishes it on the host's loopback.
ENV CLR_HTTP_HOST=0.0.0.0
CMD ["python", "-m", "service.main"]
