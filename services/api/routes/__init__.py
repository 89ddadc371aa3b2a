"""One router per resource: ops (health, readiness, metrics), persons, identify, review, sightings, privacy."""

from services.api.routes import identify, ops, persons, privacy, review, sightings

ROUTERS = [ops.router, persons.router, identify.router, review.router, sightings.router, privacy.router]
