"""The Python client for Baton and the ``baton`` command line."""
