"""The model process's side of each task ``--frontends`` serves: the shape of a ring slot, the facts a frontend
is told, and how a frontend's request is answered.

Detect: letterboxed images (or JPEGs for the model's device) in, the selected boxes out, polygons drawn here in
the pool when asked for. Classify: images resized to the classifier's input in, class probabilities out.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from kubeinfer.runtime.errors import Code, InferenceError
from kubeinfer.runtime.frontends import link
from kubeinfer.runtime.frontends.ring import SlotRing
from kubeinfer.runtime.models.yolo_io import BatchItem, Detection, EncodedJpeg, Letterboxed
from kubeinfer.runtime.tasks.base import Task
from kubeinfer.runtime.tasks.classify import ClassifyTask
from kubeinfer.runtime.tasks.detect import DetectTask

Answer = list[Detection] | np.ndarray | link.LinkError


class ServedModel(Protocol):
    task: Task

    def slot_shape(self) -> tuple[int, ...]:
        """One ring slot: one image as the frontend prepares it for this model."""
        ...

    def facts(self, gpu_uuid: str) -> link.ModelFacts: ...

    async def answer(self, items: list[link.LinkItem], ring: SlotRing) -> list[Answer]:
        """Per item its output or error; raises InferenceError when the whole request fails."""
        ...


def served(task: Task, pool: ThreadPoolExecutor) -> ServedModel:
    if isinstance(task, DetectTask):
        return ServedDetector(task, pool)
    if isinstance(task, ClassifyTask):
        return ServedClassifier(task)
    raise TypeError(f"--frontends does not serve task {task.name!r}")  # ServeConfig.validate refuses it first


class ServedDetector:
    def __init__(self, task: DetectTask, pool: ThreadPoolExecutor) -> None:
        self.task = task
        self.pool = pool

    def slot_shape(self) -> tuple[int, ...]:
        size = self.task.detector.model.image_size
        return (size, size, 3)

    def facts(self, gpu_uuid: str) -> link.DetectorFacts:
        model = self.task.detector.model
        return link.DetectorFacts(dict(model.names), model.image_size, model.segmentation, str(model.device),
                                  model.format, model.engine, gpu_uuid)

    async def answer(self, items: list[link.LinkItem], ring: SlotRing) -> list[Answer]:
        detector = self.task.detector
        batch: list[BatchItem] = [
            Letterboxed(ring.images[i.slot], i.original_height, i.original_width, i.selection) if i.slot is not None
            else EncodedJpeg(i.jpeg or b"", i.index, i.original_height, i.original_width, i.selection)
            for i in items]
        with detector.batcher.reserve(len(batch)) as reservation:
            raws = await detector.batcher.submit_many(batch, reservation)
        results: list[Answer] = [link.LinkError.of(raw.error) if raw.error is not None else raw.boxes or []
                                 for raw in raws]
        loop = asyncio.get_running_loop()
        drawing = {i: loop.run_in_executor(self.pool, detector.model.postprocess, raw, item)  # polygons: in the pool
                   for i, (raw, item) in enumerate(zip(raws, batch, strict=True))
            if raw.error is None and item.selection is not None and item.selection.masks}
        for i, boxes in zip(drawing, await asyncio.gather(*drawing.values()), strict=True):
            results[i] = boxes
        return results


class ServedClassifier:
    def __init__(self, task: ClassifyTask) -> None:
        self.task = task

    def slot_shape(self) -> tuple[int, ...]:
        size = self.task.model.preprocessing.input_size
        return (size, size, 3)

    def facts(self, gpu_uuid: str) -> link.ClassifierFacts:
        model = self.task.model
        return link.ClassifierFacts(model.preprocessing, model.output_size, list(model.class_names), model.format,
                                    gpu_uuid)

    async def answer(self, items: list[link.LinkItem], ring: SlotRing) -> list[Answer]:
        slots = [i.slot for i in items]
        if None in slots:  # a frontend's classifier writes every image into a slot: anything else is a bug
            raise InferenceError(Code.INTERNAL, "internal error: a classifier's image came without a ring slot")
        images = [ring.images[slot] for slot in slots]
        with self.task.batcher.reserve(len(images)) as reservation:
            return list(await self.task.batcher.submit_many(images, reservation))
