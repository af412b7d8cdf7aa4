"""Drives a running Tether server with the official `openai` Python client.

Usage: python3 tests/py/openai_client.py BASE_URL
Exits non-zero with a message on the first check that fails.
"""
import sys

import openai
from openai import OpenAI


def main(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="sk-test-user", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]

    # Non-streaming.
    r = client.chat.completions.create(model="tether", messages=question, temperature=0)
    assert r.choices[0].message.content == "The capital of France is Paris.", r
    assert r.choices[0].finish_reason == "stop", r
    assert r.model == "smollm2-135m-instruct@v1", r.model
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.usage.prompt_tokens == 37 and r.usage.completion_tokens > 0, r.usage

    # Raw response carries the version header.
    raw = client.chat.completions.with_raw_response.create(model="tether", messages=question, temperature=0)
    assert raw.headers.get("x-tether-version") == "smollm2-135m-instruct@v1", raw.headers

    # Streaming, with usage.
    text, finish, usage = "", None, None
    stream = client.chat.completions.create(
        model="tether", messages=question, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text += c.delta.content
            if c.finish_reason:
                finish = c.finish_reason
    assert text == "The capital of France is Paris.", text
    assert finish == "stop", finish
    assert usage is not None and usage.prompt_tokens == 37, usage

    # n=2 with logprobs.
    r = client.chat.completions.create(
        model="tether", messages=[{"role": "user", "content": "Name a colour."}],
        n=2, seed=3, temperature=1.0, max_tokens=10, logprobs=True, top_logprobs=2,
    )
    assert len(r.choices) == 2, r
    for c in r.choices:
        assert c.logprobs is not None and len(c.logprobs.content) > 0, c
        assert all(t.logprob <= 0 for t in c.logprobs.content), c
        assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content), c

    # Pinned version.
    r = client.chat.completions.create(
        model="smollm2-135m-instruct@v1", messages=question, temperature=0, max_tokens=8
    )
    assert r.model == "smollm2-135m-instruct@v1", r.model

    # Models list.
    ids = [m.id for m in client.models.list().data]
    assert "smollm2-135m-instruct@v1" in ids, ids

    # Unknown model: 404 as NotFoundError with OpenAI's error shape.
    try:
        client.chat.completions.create(model="no-such-model@v9", messages=question)
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert "no-such-model@v9" in str(e) or "does not exist" in str(e), e
    else:
        raise AssertionError("unknown model did not raise NotFoundError")

    # Bad request: 400 as BadRequestError.
    try:
        client.chat.completions.create(model="tether", messages=[])
    except openai.BadRequestError as e:
        assert e.status_code == 400
    else:
        raise AssertionError("empty messages did not raise BadRequestError")

    print("openai client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
