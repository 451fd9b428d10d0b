# The torch wheel pinned in pyproject.toml is a CUDA build on x86_64, so this one image runs on
# the CPU and, with the NVIDIA container toolkit, on a GPU (the compose file's gpu profile).
# For GPU faiss, build with --build-arg EXTRAS=gpu.
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /srv/imgsearch
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY models models
COPY indexer indexer
COPY migrations migrations
COPY configs configs
COPY templates templates
COPY static static
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}"
ENV HF_HUB_OFFLINE=1
EXPOSE 8000
CMD ["imgsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
