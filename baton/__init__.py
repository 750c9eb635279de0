"""Baton: everything the distribution installs lives under this one name.

``baton.v1`` is the generated API code; it mirrors the proto package of
``protos/baton/v1``, so protoc's imports (``from baton.v1 import job_pb2``)
resolve unchanged. ``baton.conductor``, ``baton.viewer_api``, ``baton.client``
and ``baton.common`` are the repository's top-level folders of those names,
linked here so a checkout and an installed wheel import the same modules.
"""
