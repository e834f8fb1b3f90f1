"""A client of a long job that loses its connection halfway and picks the
job up again on the other replica.

    python3 client.py --first 127.0.0.1:8081 --second 127.0.0.1:8082

1. opens a WebSocket to the first replica and sends the task;
2. reads the `accepted` event (it carries the job id) and two progress
   events, then drops the connection, as a laptop closing its lid would;
3. reconnects to the second replica with `GET /jobs/<id>` and
   `Last-Event-ID` (server-sent events) and reads the rest.

Exits 0 when every progress step arrived exactly once, in order, and the
result came; prints what it saw either way.
"""

import argparse
import asyncio
import http.client
import json
import sys

import websockets


async def first_half(replica, task, keep):
    seen = []
    async with websockets.connect(f"ws://{replica}/agents/research/run", open_timeout=10) as ws:
        await ws.send(json.dumps({"task": task}))
        async for message in ws:
            event = json.loads(message)
            seen.append(event)
            print(f"[ws {replica}] {event['type']:<9} {event['id']}  {json.dumps(event['data'])}")
            if len(seen) == keep:
                break
    print(f"-- connection dropped after {keep} events --")
    return seen


def second_half(replica, job, last_id):
    conn = http.client.HTTPConnection(*replica.split(":"), timeout=120)
    conn.request("GET", f"/jobs/{job}", headers={"accept": "text/event-stream", "last-event-id": last_id})
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"resume failed: {resp.status} {resp.read().decode()}")
    print(f"-- resumed on {replica} after event {last_id} --")
    seen, event, data = [], {}, []
    while True:
        line = resp.readline()
        if not line:
            return seen
        line = line.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue  # a heartbeat
        if line:
            field, _, value = line.partition(": ")
            if field == "data":
                data.append(value)
            elif field in ("id", "event"):
                event[field] = value
            continue
        if "event" in event:
            e = {"id": event.get("id"), "type": event["event"], "data": json.loads("\n".join(data))}
            print(f"[sse {replica}] {e['type']:<9} {e['id']}  {json.dumps(e['data'])}")
            seen.append(e)
            if e["type"] in ("result", "error"):
                return seen
        event, data = {}, []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--first", default="127.0.0.1:8081")
    p.add_argument("--second", default="127.0.0.1:8082")
    p.add_argument("--task", default="summarise the quarter")
    a = p.parse_args()
    before = asyncio.run(first_half(a.first, a.task, keep=3))
    job = before[0]["data"]["job"]
    after = second_half(a.second, job, before[-1]["id"])
    events = before + after
    steps = [e["data"]["step"] for e in events if e["type"] == "progress"]
    ids = [e["id"] for e in events]
    ok = (
        events[-1]["type"] == "result"
        and steps == list(range(1, len(steps) + 1))
        and len(set(ids)) == len(ids)
    )
    print(f"job {job}: {len(steps)} progress events, {'result' if ok else 'INCOMPLETE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
