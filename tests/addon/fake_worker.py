"""A stand-in for ``python -m texup worker`` speaking the same JSON-lines protocol (stdlib only).

Usage: ``python fake_worker.py MODE`` with MODE one of
  normal      -- 8 tiles per item, fast; an item whose src is missing gets an ImageReadError event
  slow        -- 40 tiles per item, 50 ms each (time to cancel)
  crash       -- exits with code 3 after the first progress event of a job, with a last log line
  badversion  -- says hello with protocol 99
  silent      -- never says hello
  error       -- items whose key contains "bad" fail with a ValueError event and a traceback
Results are copies of the source file (so tests can check which files exist); a cancelled item
writes nothing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "normal"
_out_lock = threading.Lock()
_cancelled: set[str] = set()
_jobs: queue.Queue[dict | None] = queue.Queue()


def send(message: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def log(text: str) -> None:
    sys.stderr.write(f"fake-worker: {text}\n")
    sys.stderr.flush()


def reader() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as err:
            send(
                {
                    "type": "error",
                    "id": None,
                    "item": None,
                    "kind": "ProtocolError",
                    "message": str(err),
                    "traceback": "",
                }
            )
            continue
        kind = msg.get("type")
        if kind == "upscale":
            _jobs.put(msg)
        elif kind == "cancel":
            _cancelled.add(msg["id"])
        elif kind == "ping":
            send({"type": "pong", "id": msg.get("id")})
        elif kind == "models":
            send({"type": "models", "id": msg.get("id"), "models": [{"name": "fake-x4", "scale": 4}]})
        elif kind == "shutdown":
            break
        else:
            send(
                {
                    "type": "error",
                    "id": msg.get("id"),
                    "item": None,
                    "kind": "ProtocolError",
                    "message": f"unknown message type {kind!r}",
                    "traceback": "",
                }
            )
    _jobs.put(None)


def run_job(job: dict) -> None:
    job_id = job["id"]
    items = job["items"]
    ok = failed = 0
    cancelled = False
    tiles = 40 if MODE == "slow" else 8
    for index, item in enumerate(items):
        start = time.monotonic()
        if MODE == "error" and "bad" in item["key"]:
            send(
                {
                    "type": "error",
                    "id": job_id,
                    "item": item["key"],
                    "kind": "ValueError",
                    "message": f"{item['src']}: simulated failure",
                    "traceback": "Traceback (most recent call last):\n  ...",
                }
            )
            failed += 1
            continue
        if not os.path.isfile(item["src"]):
            send(
                {
                    "type": "error",
                    "id": job_id,
                    "item": item["key"],
                    "kind": "ImageReadError",
                    "message": f"{item['src']}: no such file",
                    "traceback": "",
                }
            )
            failed += 1
            continue
        for done in range(1, tiles + 1):
            if job_id in _cancelled:
                cancelled = True
                break
            if MODE == "slow":
                time.sleep(0.05)
            send(
                {
                    "type": "progress",
                    "id": job_id,
                    "item": item["key"],
                    "index": index,
                    "count": len(items),
                    "done": done,
                    "total": tiles,
                }
            )
            if MODE == "crash":
                log("simulated crash: out of cheese")
                os._exit(3)
        if cancelled:
            break
        shutil.copyfile(item["src"], item["dst"])
        send(
            {
                "type": "result",
                "id": job_id,
                "item": item["key"],
                "dst": item["dst"],
                "width": 4,
                "height": 4,
                "seconds": time.monotonic() - start,
            }
        )
        ok += 1
    send({"type": "done", "id": job_id, "ok": ok, "failed": failed, "cancelled": cancelled})


def main() -> int:
    log(f"starting in mode {MODE}")
    if MODE == "silent":
        time.sleep(60)
        return 0
    send(
        {
            "type": "hello",
            "protocol": 99 if MODE == "badversion" else 1,
            "texup": "0.0-fake",
            "torch": "none",
            "device": "cpu",
            "pid": os.getpid(),
        }
    )
    threading.Thread(target=reader, daemon=True).start()
    while True:
        job = _jobs.get()
        if job is None:
            log("bye")
            return 0
        run_job(job)


if __name__ == "__main__":
    sys.exit(main())
