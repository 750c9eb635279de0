"""Generated API code: ``baton.v1`` mirrors the proto package of ``protos/baton/v1``.

Nothing else lives under ``baton``; our own packages (``common``, ``conductor``,
``viewer_api``, ``client``) have other names, so the generated imports
(``from baton.v1 import job_pb2``) resolve the same way from the source tree and
from the installed distribution.
"""
