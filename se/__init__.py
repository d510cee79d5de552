"""se: speech-enhancement recipes toolkit (models, data, features, trainer, enhancement, metrics)."""

__version__ = "0.1.0"
