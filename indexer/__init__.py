"""The offline indexer: gallery scanning, batched encoding, the vector stores (faiss files, Milvus)
behind one seam, the SQL catalogue, and the read side the app serves from."""
