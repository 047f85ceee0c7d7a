"""Ending a background task: cancel it and wait until it has ended.

>>> import asyncio
>>> async def main() -> bool:
...     task = asyncio.get_running_loop().create_task(asyncio.sleep(60))
...     await cancel_and_wait(task)
...     return task.cancelled()
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has ended; its CancelledError is
    swallowed, any other exception it ended with is raised here."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
