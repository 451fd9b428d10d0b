"""The outermost layer: the `imgsearch` command line (and, with the app issue, the FastAPI app)."""
