"""The package version, in a module of its own so that any layer can record it without importing
the package's public surface (``llmq/__init__.py`` sits above everything)."""

__version__ = "0.1.0"
