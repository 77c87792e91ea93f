"""The annotator web app: a thin FastAPI layer over ``cxrlabel.annotate`` and ``cxrlabel.quality``.

``create_app(settings)`` builds the app; ``run_server(settings, host, port, workers)`` serves it.
"""
