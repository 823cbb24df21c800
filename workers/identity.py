"""Who this worker is: its id in the job store (presence, fencing, recovery) and its device.

The id is NAME#RANDOM, drawn when the worker starts (vidstyle.workers.heartbeat sets it
before the pool starts) and inherited by its pool processes through the
environment, so names need not be unique."""
from __future__ import annotations

import os

from vidstyle.settings import setting

WORKER_ID_ENV = "VIDSTYLE_WORKER_ID"


def worker_device() -> str:
    """The device this worker's pool processes run the networks on (VIDSTYLE_DEVICE, else CUDA when present)."""
    from vidstyle.inference import resolve_device  # torch: only in workers

    return str(resolve_device(setting("VIDSTYLE_DEVICE")))


def worker_id() -> str:
    """This worker's identity for presence, fencing and recovery: NAME#RANDOM, unique per run."""
    return os.environ[WORKER_ID_ENV]
