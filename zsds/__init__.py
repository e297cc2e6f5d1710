"""zsds: a survey science data system for a ZTF-like wide-field time-domain camera.

The package is organised by pipeline stage; see ``docs/architecture.md`` for the map from
stages to modules.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
