"""A research graph whose model calls all go through Switchyard.

The graph has the shape of a LangGraph multi-agent app: a planner splits the
question into tasks, a router node sends high-priority tasks to a fast model
and the rest to a cheap one, workers run in parallel (fanned out with
`Send`), and a merge node joins their answers. Every node calls an
OpenAI-compatible API with the official `openai` client; the proxy picks
the backend from the request body's `model` (the `model-router` plugin) and
says which one served in `x-switchyard-backend`.

Usage: python app.py [--base-url http://127.0.0.1:7100/v1] [--json]
"""

import argparse
import json
import operator
import time
from typing import Annotated, TypedDict

import openai
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

FAST_MODEL = "gpt-4o-mini"
CHEAP_MODEL = "llama-3.1-8b"


class Task(TypedDict):
    id: str
    priority: str
    prompt: str
    stream: bool


class State(TypedDict):
    question: str
    tasks: list[Task]
    calls: Annotated[list[dict], operator.add]
    answer: str


def make_graph(client: openai.OpenAI):
    def call(node: str, model: str, prompt: str, priority: str, stream: bool) -> dict:
        """One chat completion; what served it and how long it took."""
        started = time.monotonic()
        messages = [{"role": "user", "content": prompt}]
        headers = {"x-priority": priority, "x-graph-node": node}
        if stream:
            first = None
            parts = []
            usage = None
            with client.chat.completions.with_streaming_response.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            ) as response:
                backend = response.headers.get("x-switchyard-backend", "?")
                for chunk in response.parse():
                    if chunk.choices and chunk.choices[0].delta.content:
                        if first is None:
                            first = time.monotonic() - started
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = chunk.usage
            text = "".join(parts)
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=headers
            )
            backend = raw.headers.get("x-switchyard-backend", "?")
            completion = raw.parse()
            text = completion.choices[0].message.content
            usage = completion.usage
            first = None
        return {
            "node": node,
            "model": model,
            "priority": priority,
            "backend": backend,
            "stream": stream,
            "tokens": usage.total_tokens if usage else 0,
            "first_token_ms": round(first * 1000) if first is not None else None,
            "ms": round((time.monotonic() - started) * 1000),
            "text": text,
        }

    def planner(state: State) -> dict:
        q = state["question"]
        tasks = [
            Task(id="triage", priority="high", prompt=f"Triage: {q}", stream=False),
            Task(id="papers", priority="normal", prompt=f"Find papers on: {q}", stream=False),
            Task(id="code", priority="normal", prompt=f"Find code for: {q}", stream=False),
            Task(id="draft", priority="high", prompt=f"Draft an answer to: {q}", stream=True),
        ]
        return {"tasks": tasks}

    def router(state: State) -> dict:
        # The routing itself is a graph edge below; this node only records
        # the plan, so the trace shows it as a step of its own.
        return {}

    def fan_out(state: State) -> list[Send]:
        return [
            Send(
                "worker",
                {
                    "task": t,
                    "model": FAST_MODEL if t["priority"] == "high" else CHEAP_MODEL,
                },
            )
            for t in state["tasks"]
        ]

    def worker(payload: dict) -> dict:
        t = payload["task"]
        result = call(
            f"worker[{t['id']}]", payload["model"], t["prompt"], t["priority"], t["stream"]
        )
        return {"calls": [result]}

    def merge(state: State) -> dict:
        joined = "\n".join(c["text"] for c in state["calls"])
        result = call("merge", CHEAP_MODEL, f"Merge these findings:\n{joined}", "normal", False)
        return {"calls": [result], "answer": result["text"]}

    graph = StateGraph(State)
    graph.add_node("planner", planner)
    graph.add_node("router", router)
    graph.add_node("worker", worker)
    graph.add_node("merge", merge)
    graph.add_edge(START, "planner")
    graph.add_edge("planner", "router")
    graph.add_conditional_edges("router", fan_out, ["worker"])
    graph.add_edge("worker", "merge")
    graph.add_edge("merge", END)
    return graph.compile()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:7100/v1")
    parser.add_argument("--json", action="store_true", help="print one JSON report")
    parser.add_argument(
        "--question", default="How do proxies balance long-running agent requests?"
    )
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="sk-local", max_retries=2)
    started = time.monotonic()
    state = make_graph(client).invoke({"question": args.question, "calls": []})
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"calls": state["calls"], "seconds": elapsed}))
        return
    print(f"{'node':<16} {'priority':<8} {'model':<14} {'backend':<8} {'tokens':>6} {'first':>7} {'total':>7}")
    for c in state["calls"]:
        first = f"{c['first_token_ms']} ms" if c["first_token_ms"] is not None else "-"
        print(
            f"{c['node']:<16} {c['priority']:<8} {c['model']:<14} {c['backend']:<8} "
            f"{c['tokens']:>6} {first:>7} {str(c['ms']) + ' ms':>7}"
        )
    tokens = sum(c["tokens"] for c in state["calls"])
    print(f"\n{len(state['calls'])} model calls, {tokens} tokens, {elapsed:.2f} s (workers ran in parallel)")


if __name__ == "__main__":
    main()
