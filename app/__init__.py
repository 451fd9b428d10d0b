"""The outermost layer: the `imgsearch` command line and the FastAPI app (routes, services, page)."""
