"""DataLoader worker defaults, and unwrapping the exception a worker re-raises in the main process."""

from __future__ import annotations

from pathlib import Path

import torch

from sangal.data import ImageDataset, ImageRecord, build_transforms
from sangal.data.workers import MAX_DEFAULT_WORKERS, default_num_workers, worker_error
from sangal.errors import DatasetError
from worker_helpers import first_worker_error


def test_default_num_workers_is_the_usable_cores_capped(monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert default_num_workers() == MAX_DEFAULT_WORKERS


class _Boom(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        if i == 1:
            raise ValueError("bad value in sample 1\n(second line)")
        return i


def test_a_real_worker_error_unwraps_to_the_original_message(tmp_path: Path) -> None:
    bad = tmp_path / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"not a jpeg")
    exc = first_worker_error(ImageDataset([ImageRecord(bad, 0, 0, 1)], build_transforms(32, 16, train=False)))
    assert isinstance(exc, DatasetError) and "Traceback" in str(exc)  # what torch hands over
    name, message = worker_error(exc)
    assert name == "DatasetError" and message.startswith(f"{bad}: unreadable or corrupt image")
    assert "\n" not in message


def test_other_exception_types_and_plain_errors() -> None:
    exc = first_worker_error(_Boom())
    assert worker_error(exc) == ("ValueError", "bad value in sample 1")  # the message's first line
    assert worker_error(ValueError("plain")) is None
    assert worker_error(DatasetError("x.jpg: bad")) is None
