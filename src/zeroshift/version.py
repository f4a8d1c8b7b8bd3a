"""The library's version, at the ground floor so that any module can record it without importing the package root."""

__version__ = "0.1.0"
