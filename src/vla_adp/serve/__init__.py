"""Policy server (``vla-adp serve``) with per-session pruning state, and its thin client.

``server`` needs the ``serve`` extra (fastapi, uvicorn); ``client`` needs only httpx and numpy.
"""
