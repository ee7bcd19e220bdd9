"""The model process's end of the frontends' links: a hello once the engine is ready, then each frontend's requests
answered by the one ``LocalEngine``, each as soon as it is done, and new facts pushed to every frontend as they
change (a reloaded gallery)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kubeinfer.runtime.engine import link
from kubeinfer.runtime.engine.base import ItemCodec
from kubeinfer.runtime.engine.local import LocalEngine
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import Code, InferenceError

log = logging.getLogger("kubeinfer.runtime.model-process")


class LinkServer:
    """Serves ``frontends`` links; ``open`` once the engine is loaded and warmed (a frontend that connects before
    waits for its hello), ``close`` to end every link (the frontends then stop)."""

    def __init__(self, frontends: int) -> None:
        self.frontends = frontends
        self.ready = asyncio.Event()
        self._engine: LocalEngine[Any, Any, Any] | None = None
        self._items: ItemCodec[Any] | None = None
        self._rings: list[SlotRing] = []
        self._gpu_uuid = ""
        self._links: set[asyncio.StreamWriter] = set()
        self._greeted: set[asyncio.StreamWriter] = set()  # told the facts: told again when they change
        self._answers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, engine: LocalEngine[Any, Any, Any] | None, items: ItemCodec[Any] | None, rings: list[SlotRing],
             gpu_uuid: str) -> None:
        """Say hello to every frontend (``engine`` None: the runtime serves no model)."""
        self._engine, self._items, self._rings, self._gpu_uuid = engine, items, rings, gpu_uuid
        self._loop = asyncio.get_running_loop()
        if engine is not None:
            engine.listen(self._facts_changed)
        self.ready.set()

    def close(self) -> None:
        for writer in self._links:
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One frontend's link (``asyncio.start_unix_server``'s handler)."""
        self._links.add(writer)
        try:
            hello = await link.receive(reader)
            if not isinstance(hello, link.FrontendHello) or not 0 <= hello.index < self.frontends:
                return
            await self.ready.wait()
            engine = self._engine
            if engine is None:
                await link.send(writer, link.Hello(None, "", 0, (), self._gpu_uuid))
                await reader.read()  # nothing to answer: the link stays open until either side ends
                return
            ring = self._rings[hello.index]
            hello_back = link.Hello(engine.facts, ring.name, ring.slots, ring.shape, self._gpu_uuid)
            self._greeted.add(writer)  # before the send: a change from now on is written after this hello
            await link.send(writer, hello_back)
            while (request := await link.receive(reader)) is not None:
                assert isinstance(request, link.BatchRequest)
                answer = asyncio.get_running_loop().create_task(self._answer(engine, request, ring, writer))
                self._answers.add(answer)
                answer.add_done_callback(self._answers.discard)
        finally:
            self._links.discard(writer)
            self._greeted.discard(writer)
            writer.close()

    async def _answer(self, engine: LocalEngine[Any, Any, Any], request: link.BatchRequest, ring: SlotRing,
                      writer: asyncio.StreamWriter) -> None:
        assert self._items is not None
        try:
            items = [self._items.from_link(item, ring) for item in request.items]
            reply = link.BatchReply(request.id, await engine.infer(items, None, request.options))
        except InferenceError as exc:
            reply = link.BatchReply(request.id, [], link.LinkError.of(exc))
        except Exception:
            log.exception("a frontend's request of %d images failed", len(request.items))
            failed = InferenceError(Code.INTERNAL, "internal error: the model process failed on this request")
            reply = link.BatchReply(request.id, [], link.LinkError.of(failed))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await link.send(writer, reply)

    def _facts_changed(self, facts: object) -> None:
        """From whichever thread changed them: each frontend is told on the loop."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                self._loop.call_soon_threadsafe(self._tell_everyone, facts)

    def _tell_everyone(self, facts: object) -> None:
        for writer in list(self._greeted):
            task = asyncio.get_running_loop().create_task(self._tell(writer, facts))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)

    @staticmethod
    async def _tell(writer: asyncio.StreamWriter, facts: object) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await link.send(writer, link.FactsChanged(facts))
