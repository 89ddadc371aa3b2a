"""Camera feeds: read -> detect people -> track -> embed -> match through the gallery -> sightings/events."""

from services.camera.detectors import DETECTORS, HogPeopleDetector, box_iou, nms
from services.camera.pipeline import CameraPipeline, CameraStats, PipelineConfig
from services.camera.sources import Frame, SourceError, VideoSource
from services.camera.tracker import TRACKERS, ByteTracker, IoUTracker, Track

__all__ = [
    "DETECTORS",
    "TRACKERS",
    "ByteTracker",
    "CameraPipeline",
    "CameraStats",
    "Frame",
    "HogPeopleDetector",
    "IoUTracker",
    "PipelineConfig",
    "SourceError",
    "Track",
    "VideoSource",
    "box_iou",
    "nms",
]
