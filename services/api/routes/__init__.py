"""One router per resource: ops (health, readiness, metrics), persons, identify, sightings, privacy."""

from services.api.routes import identify, ops, persons, privacy, sightings

ROUTERS = [ops.router, persons.router, identify.router, sightings.router, privacy.router]
