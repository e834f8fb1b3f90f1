"""Drives a running Switchyard with the official `openai` client.

Usage: openai_client.py BASE_URL

BASE_URL is the proxy's `/v1` URL; its route must send `gpt-4o-mini` to
backends named `fast-*` and `llama-3.1-8b` to `cheap`, and reject other
models with 404. Each check raises on failure; the script prints one JSON
object with what it measured, for the Rust test that runs it.
"""

import json
import sys
import time

import openai

EXPECTED = "Routed by Switchyard to {backend} (priority {priority})"


def backend_of(raw):
    return raw.headers.get("x-switchyard-backend", "")


def main():
    client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)
    out = {}

    # A whole completion arrives intact, with its usage and the backend the
    # body's `model` chose.
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "plan the research"}],
        extra_headers={"x-priority": "high"},
    )
    completion = raw.parse()
    backend = backend_of(raw)
    assert backend.startswith("fast-"), backend
    text = completion.choices[0].message.content
    assert text == EXPECTED.format(backend=backend, priority="high"), text
    assert completion.model == "gpt-4o-mini", completion.model
    assert completion.usage.prompt_tokens == 12, completion.usage
    assert completion.usage.completion_tokens == 6, completion.usage
    out["whole"] = {"backend": backend, "text": text}

    raw = client.chat.completions.with_raw_response.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "summarise"}]
    )
    assert backend_of(raw) == "cheap", backend_of(raw)
    out["cheap_backend"] = backend_of(raw)

    # A stream arrives chunk by chunk: the first token long before the end,
    # every delta intact, usage in the final chunk.
    started = time.monotonic()
    first = None
    parts = []
    usage = None
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        backend = backend_of(response)
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.monotonic() - started
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    total = time.monotonic() - started
    text = "".join(parts)
    assert text == EXPECTED.format(backend=backend, priority="normal"), text
    assert usage is not None and usage.completion_tokens == 6, usage
    out["stream"] = {
        "backend": backend,
        "chunks": len(parts),
        "first_token_s": first,
        "total_s": total,
    }

    # A model no backend serves is refused by the router, as OpenAI would.
    try:
        client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "?"}]
        )
        raise AssertionError("gpt-9 was served")
    except openai.NotFoundError as e:
        assert "gpt-9" in str(e), str(e)
        out["unknown_model"] = e.status_code

    print(json.dumps(out))


if __name__ == "__main__":
    main()
