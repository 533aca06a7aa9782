"""Running code against a batch worker's gateway executor, opened and closed as a worker does."""

from __future__ import annotations

import asyncio
import threading

from django.db import connections

from apps.gateway.batch_executor import GatewayBatchExecutor


def with_batch_executor(inspect):
    """Open a :class:`GatewayBatchExecutor`, return ``await inspect(executor)``, and close it."""

    async def open_and_close():
        executor = GatewayBatchExecutor()
        await executor.open()
        try:
            return await inspect(executor)
        finally:
            # The runtime's two database threads each close their connection (one call each),
            # so that the test database can be dropped.
            barrier = threading.Barrier(2)

            def close_connections():
                barrier.wait(10)
                connections.close_all()

            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(executor.runtime._db_executor, close_connections)
                                   for _ in range(2)))
            await executor.close()

    return asyncio.run(open_and_close())
