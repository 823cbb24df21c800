"""Two things the fleet does to the broker's own lists in Redis (kombu's layout:
a list per queue, consumed from its right end; messages a worker has taken but
not acknowledged in the hash `unacked`, with their delivery times in `unacked_index`):

- a unit put back after its worker died goes to the head of its queue, not
  behind every job queued since (`to_front`);
- a message taken by a worker that died before it started the unit waits in
  `unacked` for the visibility timeout (hours); once it has waited a worker's
  presence lapse without its unit running, it is handed back (`hand_back_stranded`).

Either may give a unit a second message; the tasks drop one that comes for a
unit that runs on a live worker or is done, so a copy too many costs nothing.
"""
from __future__ import annotations

import base64
import datetime
import json
import logging
import time
from collections.abc import Callable

from vidstyle.workers.celery import app

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's defaults (transport options unacked_key, ...)

# KEYS[1] queue; ARGV[1] the message's id as it appears in its JSON headers. Returns 1 if moved.
TO_FRONT_LUA = """
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, 99)) do
  if string.find(item, ARGV[1], 1, true) then
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[1], item)
    return 1
  end
end
return 0
"""

# KEYS[1] unacked, [2] unacked_index; ARGV[1] delivery tag. Returns 1 if handed back.
HAND_BACK_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', entry[3], cjson.encode(entry[1]))
return 1
"""

logger = logging.getLogger(__name__)


def to_front(queue: str, task_id: str) -> None:
    """Move a just-published message to the head of its queue (it went in at the tail)."""
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.register_script(TO_FRONT_LUA)(keys=[queue], args=[f'"id": "{task_id}"'])


def hand_back_stranded(waiting: float, is_waiting: Callable[[str, list], bool]) -> int:
    """Hand back to their queues the messages taken more than `waiting` seconds ago
    whose unit `is_waiting(task name, task args)` says is not running. Returns how many."""
    handed = 0
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        hand_back = client.register_script(HAND_BACK_LUA)
        for tag in client.zrangebyscore(UNACKED_INDEX, "-inf", time.time() - waiting):
            raw = client.hget(UNACKED, tag)
            if raw is None:
                continue
            message = json.loads(raw)[0]
            try:
                args = json.loads(base64.b64decode(message["body"]))[0]
                name, eta = message["headers"]["task"], message["headers"].get("eta")
            except (KeyError, ValueError, TypeError, IndexError):
                continue  # not a message of ours
            if eta and datetime.datetime.fromisoformat(eta).timestamp() > time.time() - waiting:
                continue  # a retry that its worker holds until its time
            if is_waiting(name, args) and hand_back(keys=[UNACKED, UNACKED_INDEX], args=[tag]):
                logger.warning("message %s of %s%s handed back: its worker took it and died", tag, name, args[:2])
                handed += 1
    return handed
