"""Data set loaders."""
