"""The vidstyle worker fleet: a Celery app on a Redis broker (`vidstyle.workers.celery`),
the stylize task (`vidstyle.workers.tasks`), the shared storage root (`vidstyle.workers.storage`)
and the commands that submit and follow jobs (`vidstyle.workers.cli`).

Start a worker with `vidstyle worker` or plain `celery -A vidstyle.workers worker -Q vidstyle`.
"""
