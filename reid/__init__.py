"""reid: the model library (data, models, losses, metrics, Embedder). No database, no HTTP."""

from reid.errors import ReidError

__all__ = ["ReidError"]
__version__ = "0.1.0"
