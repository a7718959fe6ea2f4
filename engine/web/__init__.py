"""The api actor's web side: the dashboard's binary stream (``stream``), health and Prometheus
metrics (``health``), the aiohttp application (``app``) and the static dashboard (``static/``).

docs/api.md is the reference for every endpoint and for the WebSocket protocol.
"""
