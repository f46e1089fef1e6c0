"""A DataLoader worker's exception as the main process receives it, with the worker shut down at once."""

from __future__ import annotations

import torch


def first_worker_error(dataset: torch.utils.data.Dataset) -> BaseException:
    """The exception that iterating ``dataset`` in one DataLoader worker re-raises (batch size 1).

    The worker is shut down before returning: left alone, the failed iterator sits in a reference cycle with the
    exception's traceback, and when a later garbage collection frees both, torch's shutdown waits out its 5 s join
    timeout inside whichever test the collection falls in (10 to 15 s of each `make test` worker's time)."""
    batches = iter(torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1))
    try:
        for _ in batches:
            pass
    except Exception as error:  # the worker's own type, re-raised by torch
        return error
    finally:
        batches._shutdown_workers()  # torch's own shutdown, now; idempotent when the iterator is freed later
    raise AssertionError("the DataLoader worker raised nothing")
