"""Report a long job's events to Switchyard from a worker.

Switchyard forwards a job's request with two headers:

    x-switchyard-job-id    the job's id
    x-switchyard-reply-to  the Redis stream the job's events go to

A worker answers the request with `202 Accepted` at once, then reports:

    job = JobReporter.from_headers(request_headers)
    job.progress({"step": 1, "of": 3})
    job.result({"answer": 42})      # or job.error({"message": "..."})

Events go straight to Redis (`XADD <reply-to> * type <type> data <data>`)
when `SWITCHYARD_REDIS_URL` is set and the `redis` package is installed,
else to the proxy's admin API (`POST <SWITCHYARD_ADMIN_URL>/jobs/<id>/events`),
which needs nothing beyond the standard library.
"""

import json
import os
import urllib.request

EVENT_TYPES = ("progress", "result", "error", "heartbeat")


class JobReporter:
    def __init__(self, job_id, reply_to, redis_url=None, admin_url=None, admin_token=None):
        self.job_id = job_id
        self.reply_to = reply_to
        self.admin_url = (admin_url or os.environ.get("SWITCHYARD_ADMIN_URL", "")).rstrip("/")
        self.admin_token = admin_token or os.environ.get("SWITCHYARD_ADMIN_TOKEN")
        self._redis = None
        redis_url = redis_url or os.environ.get("SWITCHYARD_REDIS_URL")
        if redis_url:
            import redis  # only needed for the Redis transport

            self._redis = redis.Redis.from_url(redis_url)
        elif not self.admin_url:
            raise ValueError("set SWITCHYARD_REDIS_URL or SWITCHYARD_ADMIN_URL")

    @classmethod
    def from_headers(cls, headers, **kwargs):
        """A reporter for the job whose request carried `headers`."""
        job_id = headers.get("x-switchyard-job-id")
        reply_to = headers.get("x-switchyard-reply-to")
        if not job_id or not reply_to:
            raise ValueError("not a Switchyard job request (no x-switchyard-job-id)")
        return cls(job_id, reply_to, **kwargs)

    def progress(self, data):
        return self.send("progress", data)

    def result(self, data):
        return self.send("result", data)

    def error(self, data):
        return self.send("error", data)

    def heartbeat(self):
        """Tells the proxy the job is alive without telling the client."""
        return self.send("heartbeat", "")

    def send(self, event_type, data):
        """Appends one event; returns its id."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"event type must be one of {EVENT_TYPES}")
        text = data if isinstance(data, str) else json.dumps(data)
        if self._redis is not None:
            return self._redis.xadd(self.reply_to, {"type": event_type, "data": text}).decode()
        body = json.dumps({"type": event_type, "data": text}).encode()
        req = urllib.request.Request(
            f"{self.admin_url}/jobs/{self.job_id}/events",
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        if self.admin_token:
            req.add_header("authorization", f"Bearer {self.admin_token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["id"]
