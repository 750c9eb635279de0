"""Baton's version, from the installed distribution."""

from importlib import metadata

try:
    VERSION = metadata.version("baton")
except metadata.PackageNotFoundError:  # running from a tree that is not installed
    VERSION = "0.0.0+local"
