"""The HTTP archive API of zsds (``zsds serve``), a FastAPI application.

Modules: :mod:`~zsds.api.context` (what endpoints share), :mod:`~zsds.api.access` (the
visibility rule and API tokens), :mod:`~zsds.api.app` (the application factory) and one module
per endpoint group (images, cutouts, lightcurves, candidates, forced photometry, IVOA).
See ``docs/archive-api.md``.
"""
