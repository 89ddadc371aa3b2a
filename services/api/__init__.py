"""The REST API: ``create_app(settings)``."""

from services.api.app import create_app

__all__ = ["create_app"]
