"""Run one re-read task in this process (`headend reread` without `--queue`), with links and connections of its own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

from headend.poll.poller import Poller
from headend.poll.service import on_database, poll_config, reread_config
from headend.reread.runner import OnDatabase, ReadingsRequester, RereadRunner, RereadStore
from headend.reread.tasks import RereadTask
from headend.settings import Settings


async def run_task_here(
    settings: Settings, database_url: str, task_id: str, requester: ReadingsRequester | None, stop: threading.Event
) -> RereadTask | None:
    """Run the pending task `task_id` to its end; None when another runner took it first."""
    store = RereadStore(database_url, settings)
    poller = Poller(poll_config(settings), lambda: datetime.now(UTC))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reread-db") as executor:
        db: OnDatabase = partial(on_database, executor, stop)
        runner = RereadRunner(store, poller, requester, reread_config(settings), db, lambda: datetime.now(UTC))
        try:
            return await runner.run(task_id)
        finally:
            await poller.close()
            store.close()
