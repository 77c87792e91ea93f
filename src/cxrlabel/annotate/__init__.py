"""Annotation engine: accounts, page assignment and idempotent submission (no web code).

The web app and the crowd simulator both drive these functions; every one takes ``now`` so the
simulator can replay days of work in seconds.
"""
