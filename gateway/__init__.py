"""The HTTP face of Baton: REST routes, server-sent events and the dashboard.

``baton gateway`` holds no state of its own. Every route comes from a
``google.api.http`` annotation in the protos (``routes``), is turned into a
gRPC call to the conductor or the viewer (``transcode``), and its answer into
proto3 JSON, an HTTP status mapped from the gRPC code, or a stream of
server-sent events (``events``). ``session`` carries the caller's token
through; ``openapi`` describes the routes; ``server`` wires it together and
serves the dashboard's static files.
"""
