"""The vidstyle worker fleet: a Celery app on a Redis broker (`workers.celery`),
the stylize task (`workers.tasks`), the shared storage root (`workers.storage`)
and the commands that submit and follow jobs (`workers.cli`).

Start a worker with `vidstyle worker` or plain `celery -A workers worker -Q vidstyle`.
"""
