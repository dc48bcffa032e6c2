"""Secrets: what a project stores, sealed; the use cases on them and the writes they commit."""
