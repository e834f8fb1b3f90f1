"""Follows a Switchyard job as a client would, printing one JSON line per
event as it arrives: {"id", "type", "data"}.

    job_client.py ws  URL [--body JSON] [--stop-after N]
    job_client.py sse URL [--body JSON] [--last-event-id ID] [--stop-after N]

`ws` opens a WebSocket with the `websockets` package; on a job route the
first message is the job's request, unless the URL resumes one (`?job=`).
`sse` POSTs the body (or GETs when there is none) with
`accept: text/event-stream` and reads the stream with `http.client`.
--stop-after drops the connection after N events, as a client that
loses its network would. The last line is {"end": why}.
"""

import argparse
import asyncio
import http.client
import json
import sys
import urllib.parse


def emit(obj):
    print(json.dumps(obj), flush=True)


async def follow_ws(url, body, stop_after):
    import websockets

    count = 0
    async with websockets.connect(url, open_timeout=10, ping_interval=None, max_size=2**24) as ws:
        if body is not None:
            await ws.send(body)
        try:
            async for message in ws:
                event = json.loads(message)
                emit(event)
                count += 1
                if stop_after and count >= stop_after:
                    emit({"end": "stopped"})
                    return
        except websockets.ConnectionClosedError as e:
            emit({"end": f"closed {e.rcvd.code if e.rcvd else 'abnormally'}"})
            return
        code = ws.close_code
    emit({"end": f"closed {code}"})


def follow_sse(url, body, last_event_id, stop_after):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"accept": "text/event-stream"}
    if last_event_id:
        headers["last-event-id"] = last_event_id
    path = u.path + (f"?{u.query}" if u.query else "")
    if body is None:
        conn.request("GET", path, headers=headers)
    else:
        headers["content-type"] = "application/json"
        conn.request("POST", path, body=body.encode(), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        emit({"end": f"status {resp.status}", "body": resp.read().decode(errors="replace")})
        return
    count = 0
    event = {}
    data = []
    try:
        while True:
            line = resp.readline()
            if not line:
                emit({"end": "eof"})
                return
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data or "type" in event:
                    text = "\n".join(data)
                    try:
                        payload = json.loads(text)
                    except ValueError:
                        payload = text
                    emit({"id": event.get("id"), "type": event.get("type", "message"), "data": payload})
                    count += 1
                    if stop_after and count >= stop_after:
                        emit({"end": "stopped"})
                        return
                event, data = {}, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event["id"] = value
            elif field == "event":
                event["type"] = value
            elif field == "data":
                data.append(value)
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        emit({"end": f"broken: {e}"})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ws", "sse"])
    p.add_argument("url")
    p.add_argument("--body")
    p.add_argument("--last-event-id")
    p.add_argument("--stop-after", type=int, default=0)
    a = p.parse_args()
    if a.mode == "ws":
        try:
            asyncio.run(follow_ws(a.url, a.body, a.stop_after))
        except Exception as e:  # connection refused, reset by a killed proxy
            emit({"end": f"broken: {type(e).__name__}: {e}"})
    else:
        follow_sse(a.url, a.body, a.last_event_id, a.stop_after)


if __name__ == "__main__":
    sys.exit(main())
