"""The official `openai` client against Switchyard's TLS listener.

Usage: openai_tls.py BASE_URL CA_FILE CLIENT_KEY

The proxy at BASE_URL (https) authenticates CLIENT_KEY, and its backend,
itself behind TLS, answers only with the pool's own key: so every success
here means the client's key stayed at the proxy. Prints one JSON object.
"""

import json
import sys

import openai


def main():
    base_url, ca_file, key = sys.argv[1:4]
    http_client = openai.DefaultHttpxClient(verify=ca_file)
    client = openai.OpenAI(base_url=base_url, api_key=key, http_client=http_client, max_retries=0)
    out = {}

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello over tls"}]
    )
    completion = raw.parse()
    assert completion.usage.completion_tokens == 6, completion.usage
    out["whole"] = {"backend": raw.headers.get("x-switchyard-backend"), "http": raw.http_response.http_version}

    parts = []
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream over tls"}],
        stream=True,
    ) as response:
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    out["stream_chunks"] = len(parts)
    assert "".join(parts).startswith("Routed by Switchyard"), parts

    wrong = openai.OpenAI(base_url=base_url, api_key="sk-not-a-client", http_client=http_client, max_retries=0)
    try:
        wrong.models.list()
        raise AssertionError("a wrong key was let in")
    except openai.AuthenticationError as e:
        out["wrong_key"] = e.status_code

    print(json.dumps(out))


if __name__ == "__main__":
    main()
