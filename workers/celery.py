"""The Celery app (`celery -A vidstyle.workers worker` finds it here), configured by vidstyle.workers.celeryconfig.

As in Celery's own layout, the app names its parts by module path instead of
importing them: its tasks (vidstyle.workers.tasks, vidstyle.workers.training) and the worker's heartbeat step
(vidstyle.workers.heartbeat) load when a worker starts, and they import this app."""
from __future__ import annotations

import os

from celery import Celery

# Workers fork their pool processes: asking whether CUDA is there must not
# initialise it in the parent (children could not use it), so ask NVML instead.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

app = Celery("vidstyle", include=["vidstyle.workers.tasks", "vidstyle.workers.training"])
app.config_from_object("vidstyle.workers.celeryconfig")
app.steps["worker"].add("vidstyle.workers.heartbeat:Heartbeat")
