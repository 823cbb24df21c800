#!/usr/bin/env bash
# Smoke test of an install: the README's main command (sample + submit with the
# built-in udnie style), any painting, and the fleet (a private redis-server, one worker,
# `vidstyle submit --wait`), run with the `vidstyle` of the venv given. CI runs
# it in a venv with the runtime dependencies only, so a dependency that only the
# test extras bring in (as `packaging` once was, for kombu's Redis transport)
# fails here instead of on a user's machine.
#   usage: deploy/smoke.sh VENV
set -euo pipefail
venv=$(cd "$1" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export OMP_NUM_THREADS=1 VIDSTYLE_COMPILE=0  # the smoke test checks the install, not speed

# The README's main command, on a small sample.
"$venv/bin/vidstyle" sample sample.mp4 --size 96x64 --frames 12
"$venv/bin/vidstyle" submit sample.mp4 --style udnie
test -s sample.udnie.mp4
# Any painting, by the any-painting network: one made on the spot.
"$venv/bin/python" -c 'from PIL import Image; Image.radial_gradient("L").convert("RGB").resize((96, 96)).save("painting.png")'
"$venv/bin/vidstyle" submit sample.mp4 --style-image painting.png
test -s sample.painting.mp4

# The fleet: Redis on a free port, one worker, a job followed to its end.
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no >redis.log 2>&1 &
pids+=($!)
export VIDSTYLE_BROKER_URL="redis://127.0.0.1:$port/0" VIDSTYLE_STORAGE="$work"
"$venv/bin/python" - "$port" <<'PY'
import sys, time, redis
client = redis.Redis(port=int(sys.argv[1]), socket_connect_timeout=1)
for _ in range(100):  # until it accepts connections, at most about 10 s
    try:
        client.ping()
        break
    except redis.ConnectionError:
        time.sleep(0.1)
PY
"$venv/bin/vidstyle" worker --name smoke@%h --loglevel WARNING >worker.log 2>&1 &
pids+=($!)
if ! timeout 300 "$venv/bin/vidstyle" submit sample.mp4 --style udnie -o fleet.mp4 --wait; then
    echo "smoke: the fleet job failed; worker log:" >&2
    cat worker.log >&2
    exit 1
fi
test -s fleet.mp4
timeout 300 "$venv/bin/vidstyle" submit sample.mp4 --style-image painting.png -o fleet-painting.mp4 --wait
test -s fleet-painting.mp4
echo "smoke: the README's command, any painting and the fleet ran with $venv"
