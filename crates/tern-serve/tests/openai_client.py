"""The official `openai` Python client against a running `tern serve` (base URL in argv[1]):
chat, streaming chat with usage, completions, the model list, and the error cases as the
client raises them. Run by tests/openai_client.rs; exits non-zero on the first failure."""

import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key="sekrit", max_retries=0)
model = "tern-sotu-b158"

models = [m.id for m in client.models.list()]
assert models == [model], models

msgs = [{"role": "user", "content": "What is the state of the Union?"}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
assert r.object == "chat.completion"
assert r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length")
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
whole = r.choices[0].message.content

text, usage, finish = "", None, None
for chunk in client.chat.completions.create(
    model=model, messages=msgs, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
assert text == whole, (text, whole)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
assert finish == r.choices[0].finish_reason

c = client.completions.create(model=model, prompt="The state of the Union is", max_tokens=8,
                              temperature=0, stop=["\n"], seed=1)
assert c.object == "text_completion" and c.usage.completion_tokens <= 8, c
streamed = "".join(
    ch.choices[0].text
    for ch in client.completions.create(model=model, prompt="The state of the Union is",
                                        max_tokens=8, temperature=0, stop=["\n"], stream=True)
    if ch.choices
)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

# Log-probabilities: chat (content entries with top alternatives), streamed the same, and
# completions' legacy shape.
lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0,
                                    logprobs=True, top_logprobs=2)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens or lp.choices[0].finish_reason == "stop", lp
for e in content:
    assert e.logprob <= 0 and len(e.top_logprobs) == 2, e
    # Greedy: the chosen token is the most likely one.
    assert abs(e.logprob - e.top_logprobs[0].logprob) < 1e-6, e
    assert bytes(e.bytes) == e.token.encode(), e
streamed = []
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=6,
                                            temperature=0, logprobs=True, top_logprobs=2,
                                            stream=True):
    for ch in chunk.choices:
        if ch.logprobs is not None and ch.logprobs.content:
            streamed += ch.logprobs.content
assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
cl = client.completions.create(model=model, prompt="The state of the Union is", max_tokens=4,
                               temperature=0, logprobs=3)
l = cl.choices[0].logprobs
assert len(l.tokens) == len(l.token_logprobs) == len(l.top_logprobs) == len(l.text_offset)
assert all(len(t) <= 3 for t in l.top_logprobs) and all(x <= 0 for x in l.token_logprobs), l


def expect(exc, fn):
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


e = expect(openai.NotFoundError, lambda: client.chat.completions.create(model="nope", messages=msgs))
assert "nope" in str(e)
e = expect(openai.BadRequestError,
           lambda: client.chat.completions.create(model=model, messages=msgs, n=2))
assert "n = 2" in str(e)
e = expect(openai.BadRequestError, lambda: client.chat.completions.create(
    model=model, messages=[{"role": "wizard", "content": "x"}]))
assert "unknown role" in str(e)
e = expect(openai.BadRequestError, lambda: client.completions.create(
    model=model, prompt="the union " * 1500, max_tokens=4))
assert "context" in str(e)
bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
expect(openai.AuthenticationError, lambda: bad.models.list())
print("openai client: all checks passed")
