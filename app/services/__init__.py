"""The service layer: plain Python the routes call (testable without HTTP)."""
