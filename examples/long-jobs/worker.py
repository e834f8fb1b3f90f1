"""A worker whose jobs take a while: it answers 202 at once and reports a
progress event every `--step` seconds, then the result.

    python3 worker.py --listen 127.0.0.1:9201 --steps 5 --step 1.0
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from switchyard_job import JobReporter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:9201")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step", type=float, default=1.0, help="seconds per step")
    parser.add_argument("--name", default="worker")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            task = self.rfile.read(length).decode(errors="replace")
            try:
                job = JobReporter.from_headers(self.headers)
            except ValueError as e:
                self.answer(400, {"error": str(e)})
                return
            self.answer(202, {"job": job.job_id, "worker": args.name})
            threading.Thread(target=run, args=(job, task), daemon=True).start()

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    def run(job, task):
        try:
            for i in range(1, args.steps + 1):
                time.sleep(args.step)
                job.progress({"step": i, "of": args.steps, "worker": args.name})
            job.result({"worker": args.name, "task": task, "answer": f"done after {args.steps} steps"})
        except Exception as e:  # the proxy ends the job after job_timeout anyway
            print(f"job {job.job_id}: cannot report: {e}", flush=True)

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"worker {args.name} on {args.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
