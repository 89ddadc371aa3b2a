"""One router per resource: ops (health, readiness, metrics), persons, identify, review, cameras, sightings, privacy."""

from services.api.routes import cameras, identify, ops, persons, privacy, review, sightings

ROUTERS = [
    ops.router,
    persons.router,
    identify.router,
    review.router,
    cameras.router,
    sightings.router,
    privacy.router,
]
