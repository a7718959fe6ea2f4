"""The exchange simulator: a synthetic market served over each venue's real protocol.

``sim.market`` is the venue-neutral market model, ``sim.venue`` the interface an exchange
module implements to speak for it, ``sim.server`` the WebSocket/HTTP servers and clock,
``sim.recorded`` the reader of the recorded real traffic used as test reference.
"""
