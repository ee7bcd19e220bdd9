"""The video task: ``task`` streams frames through ``ops``' OpenCV pipelines (and the shared detector)."""

from kubeinfer.runtime.tasks.video.task import FrameResult, VideoMessage, VideoSummary, VideoTask

__all__ = ["FrameResult", "VideoMessage", "VideoSummary", "VideoTask"]
