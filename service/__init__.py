"""A project-scoped secrets service, wire-compatible with LangWatch's secrets API."""

__version__ = "0.1.0"
