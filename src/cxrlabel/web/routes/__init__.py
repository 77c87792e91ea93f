"""Routers of the web app; every module here with a ``router`` is included by ``create_app``."""
