"""The event loop a Service runs its calls on, in a background thread for as long as the Service is
open: started, and stopped the way asyncio.run stops a loop (every task cancelled and awaited)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

log = logging.getLogger("duo.service")


@contextlib.contextmanager
def running(cancel_all):
    """A new loop running in its own thread; on exit `cancel_all()` (the Service's futures), then the
    loop's tasks, then the loop."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_quiet_stale_clients)
    thread = threading.Thread(target=loop.run_forever, name="duo-service", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        cancel_all()
        asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _quiet_stale_clients(loop, context: dict) -> None:
    """litellm closes the HTTP clients it cached for an earlier Service's loop (closed by then) on a
    later one's; their sockets belonged to the closed loop, so the close fails, harmlessly, and asyncio
    would print the traceback of a task nobody awaited onto a stage's stderr (a budget stop says one
    line). Everything else goes to the default handler."""
    exc = context.get("exception")
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        log.debug("stale HTTP client of a closed loop: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


async def _cancel_tasks() -> None:
    """What asyncio.run does before closing its loop: cancel and await every task still there, so none
    is destroyed pending. litellm's own bookkeeping (its logging worker, which e.g. fetches a finished
    batch's output to price it) gets a few seconds to finish first."""
    from duo.compat import service as compat

    try:
        await asyncio.wait_for(compat.litellm_logging_worker().flush(), timeout=5)
    except Exception:  # its bookkeeping only; ours is journaled
        pass
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
