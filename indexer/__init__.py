"""The offline indexer: gallery scanning, batched encoding, faiss indexes, the SQL catalogue (issue 3)."""
