# CPU image. The torch wheel pinned in pyproject.toml is a CUDA build on x86_64, so the same image
# runs on a GPU host with the NVIDIA container toolkit (see the gpu profile in docker-compose.yml).
FROM python:3.11-slim
WORKDIR /srv/imgsearch
COPY pyproject.toml README.md ./
COPY app app
COPY models models
COPY indexer indexer
COPY migrations migrations
COPY configs configs
RUN pip install --no-cache-dir -e .
ENV HF_HUB_OFFLINE=1
CMD ["imgsearch", "demo", "--out", "/data/demo"]
