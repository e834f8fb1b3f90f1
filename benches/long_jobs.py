"""Connection-scale and long-job benchmarks against a running Switchyard,
driven by benches/long-jobs.sh (which starts the proxy, Redis and the
backends, and raises the open-file limit).

    long_jobs.py echo --listen 127.0.0.1:9300
        a WebSocket echo backend
    long_jobs.py hold --url ws://PROXY/ws --count 10000 --pid PROXY_PID --rest 10
        opens COUNT WebSockets through the proxy, checks each echoes, then
        measures the proxy's RSS per connection and its CPU while they idle
    long_jobs.py worker --listen 127.0.0.1:9301 --redis URL --duration 30 --every 1
        a job worker: 202 at once, then a progress event every EVERY seconds
        for DURATION seconds, each stamped with the time it was written
    long_jobs.py jobs --url ws://PROXY/jobs/run --count 1000
        starts COUNT jobs over WebSockets at once and measures each event's
        lag from the worker's XADD to the client

Each prints one JSON object with its figures.
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wakeups(pid):
    """Context switches of each thread of `pid`, by thread name: how often
    each woke."""
    by_name = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name, switches = "?", 0
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip()
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        by_name[name] = by_name.get(name, 0) + switches
    return by_name


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def echo(listen):
    import websockets

    async def handler(ws):
        async for message in ws:
            await ws.send(message)

    host, port = listen.rsplit(":", 1)
    async with websockets.serve(handler, host, int(port), ping_interval=None, max_queue=4, backlog=4096):
        await asyncio.Future()


async def hold(url, count, pid, rest, job):
    """Holds COUNT WebSockets; with `job`, each starts a job (its first
    message back is `accepted`) instead of echoing."""
    import websockets

    base = rss_kib(pid)
    conns, failures = [], {}
    started = time.monotonic()
    sem = asyncio.Semaphore(256)

    async def one(i):
        async with sem:
            try:
                ws = await websockets.connect(url, open_timeout=30, ping_interval=None, max_queue=4,
                                              compression=None)
                await ws.send(json.dumps({"task": i}) if job else f"hello {i}")
                answer = await asyncio.wait_for(ws.recv(), 30)
                if job and json.loads(answer)["type"] != "accepted":
                    raise RuntimeError(f"not accepted: {answer[:80]}")
                if not job and answer != f"hello {i}":
                    raise RuntimeError("wrong echo")
                conns.append(ws)
            except Exception as e:
                key = type(e).__name__ + ": " + str(e)[:80]
                failures[key] = failures.get(key, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    opened = time.monotonic() - started
    await asyncio.sleep(2)
    held = rss_kib(pid)
    cpu0, wake0, t0 = cpu_seconds(pid), wakeups(pid), time.monotonic()
    await asyncio.sleep(rest)
    cpu1, wake1, t1 = cpu_seconds(pid), wakeups(pid), time.monotonic()
    # Still open after the rest? Every one answers a ping.
    async def answers(ws):
        try:
            await asyncio.wait_for(await ws.ping(), 10)
            return 1
        except Exception:
            return 0

    alive = sum(await asyncio.gather(*(answers(ws) for ws in conns)))
    for ws in conns:
        await ws.close()
    print(json.dumps({
        "asked": count, "held": len(conns), "alive_after_rest": alive, "failures": failures,
        "open_seconds": round(opened, 2),
        "proxy_rss_base_mib": round(base / 1024, 1), "proxy_rss_held_mib": round(held / 1024, 1),
        "proxy_rss_per_connection_kib": round((held - base) / max(1, len(conns)), 2),
        "proxy_cpu_at_rest_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "proxy_wakeups_per_second_at_rest": round((sum(wake1.values()) - sum(wake0.values())) / (t1 - t0), 1),
        "proxy_wakeups_per_second_by_thread": {
            k: round((v - wake0.get(k, 0)) / (t1 - t0), 1) for k, v in wake1.items() if v != wake0.get(k, 0)
        },
    }), flush=True)


async def worker(listen, redis_url, duration, every):
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=30)
    r = aioredis.Redis(connection_pool=pool)
    tasks = set()

    async def run(reply_to):
        steps = int(duration / every)
        for i in range(1, steps + 1):
            await asyncio.sleep(every)
            await r.xadd(reply_to, {"type": "progress", "data": json.dumps({"step": i, "sent": time.time()})})
        await r.xadd(reply_to, {"type": "result", "data": json.dumps({"sent": time.time()})})

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode().split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", 0))
                if length:
                    await reader.readexactly(length)
                t = asyncio.create_task(run(headers["x-switchyard-reply-to"]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), backlog=4096)
    async with server:
        await server.serve_forever()


async def jobs(url, count):
    import websockets

    lags, ends, failures = [], {}, {}
    started = time.monotonic()

    async def one(i):
        try:
            async with websockets.connect(url, open_timeout=60, ping_interval=None, compression=None) as ws:
                await ws.send(json.dumps({"task": i}))
                async for message in ws:
                    now = time.time()
                    event = json.loads(message)
                    data = event.get("data")
                    if isinstance(data, dict) and "sent" in data:
                        lags.append(now - data["sent"])
                    if event["type"] in ("result", "error"):
                        ends[event["type"]] = ends.get(event["type"], 0) + 1
        except Exception as e:
            key = type(e).__name__ + ": " + str(e)[:80]
            failures[key] = failures.get(key, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    ms = lambda v: None if v is None else round(v * 1000, 2)
    print(json.dumps({
        "jobs": count, "ends": ends, "failures": failures, "events": len(lags),
        "seconds": round(time.monotonic() - started, 1),
        "lag_p50_ms": ms(percentile(lags, 0.50)), "lag_p99_ms": ms(percentile(lags, 0.99)),
        "lag_max_ms": ms(max(lags) if lags else None),
        "lag_mean_ms": ms(statistics.fmean(lags) if lags else None),
    }), flush=True)


def proxy_lag(metrics_url):
    """The proxy's own view of relay lag (from an event's stream id to its
    relay), as bucket bounds of `switchyard_job_relay_lag_seconds`."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    buckets = []
    count = 0
    for line in text.splitlines():
        if line.startswith("switchyard_job_relay_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("switchyard_job_relay_lag_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    buckets.sort()

    def bound(q):
        for le, n in buckets:
            if n >= q * count:
                return le * 1000
        return None

    print(json.dumps({"relays_counted": int(count), "proxy_lag_p50_ms_at_most": bound(0.5),
                      "proxy_lag_p99_ms_at_most": bound(0.99)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--listen", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--url", required=True)
    h.add_argument("--count", type=int, default=10000)
    h.add_argument("--pid", type=int, required=True)
    h.add_argument("--rest", type=float, default=10)
    h.add_argument("--job", action="store_true")
    w = sub.add_parser("worker")
    w.add_argument("--listen", required=True)
    w.add_argument("--redis", required=True)
    w.add_argument("--duration", type=float, default=30)
    w.add_argument("--every", type=float, default=1)
    j = sub.add_parser("jobs")
    j.add_argument("--url", required=True)
    j.add_argument("--count", type=int, default=1000)
    m = sub.add_parser("proxy-lag")
    m.add_argument("--metrics", required=True)
    a = p.parse_args()
    if a.cmd == "proxy-lag":
        return proxy_lag(a.metrics)
    raise_fd_limit()
    if a.cmd == "echo":
        asyncio.run(echo(a.listen))
    elif a.cmd == "hold":
        asyncio.run(hold(a.url, a.count, a.pid, a.rest, a.job))
    elif a.cmd == "worker":
        asyncio.run(worker(a.listen, a.redis, a.duration, a.every))
    else:
        asyncio.run(jobs(a.url, a.count))


if __name__ == "__main__":
    sys.exit(main())
