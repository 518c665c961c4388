"""The official ``openai`` Python client against a real server and a real (tiny, untrained) lmforge run.

Every answer is checked against the same call made directly through the :mod:`lmforge.api` facade, so the
server must pass requests and results through without changing them.
"""

from __future__ import annotations

import numpy as np
import pytest

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "Speak, speak."}]


@pytest.fixture
def client(serve, tiny_lm):
    srv = serve(tiny_lm)
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_models_list(client, tiny_lm):
    ids = [m.id for m in client.models.list()]
    assert ids == [tiny_lm.name]
    assert client.models.retrieve(tiny_lm.name).id == tiny_lm.name


def test_chat_completion_matches_the_facade(client, tiny_lm):
    resp = client.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=12, temperature=0)
    direct = tiny_lm.chat(HELLO, max_new_tokens=12, temperature=0)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == direct.text
    assert resp.choices[0].finish_reason == direct.finish_reason
    assert resp.usage.prompt_tokens == direct.prompt_tokens
    assert resp.usage.completion_tokens == direct.completion_tokens
    assert resp.usage.total_tokens == direct.prompt_tokens + direct.completion_tokens


def test_seeded_sampling_and_n(client, tiny_lm):
    resp = client.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=16, temperature=1.0,
                                          seed=7, n=2, extra_body={"top_k": 20, "min_p": 0.01})
    expected = [tiny_lm.chat(HELLO, max_new_tokens=16, temperature=1.0, top_k=20, min_p=0.01, seed=7 + i).text
                for i in range(2)]
    assert [c.message.content for c in resp.choices] == expected
    assert expected[0] != expected[1]


def test_streaming_chat(client, tiny_lm):
    stream = client.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=20, temperature=0.9,
                                            seed=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    direct = list(tiny_lm.stream_chat(HELLO, max_new_tokens=20, temperature=0.9, seed=3))
    assert text == "".join(c.text for c in direct)
    assert len(text) > 0
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [direct[-1].finish_reason]
    assert chunks[-1].usage.completion_tokens == direct[-1].completion_tokens
    # really streamed: separate events for the text and for the finish and usage (a stream that lags behind the
    # engine gets its waiting tokens merged into one delta, serving/responses.py, so one text event can be all)
    assert any(c.choices and c.choices[0].delta.content for c in chunks) and len(chunks) >= 3


def test_streamed_chat_usage_counts_the_templated_prompt(client, tiny_lm):
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    kw = dict(model=tiny_lm.name, messages=messages, max_tokens=8, temperature=0)
    plain = client.chat.completions.create(**kw)
    streamed = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    # the run's "plain" template, written out by hand; the char tokenizer gives one token per character
    templated = "System: Be brief.\nUser: Speak, speak.\nAssistant:"
    assert tiny_lm.chat_template == "plain"
    expected = len(tiny_lm.tokenizer.encode(templated))
    assert expected > sum(tiny_lm.count_tokens(m["content"]) for m in messages)  # the template's tokens count
    assert plain.usage.prompt_tokens == expected
    assert streamed[-1].usage.prompt_tokens == expected
    assert streamed[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_plain_and_streamed(client, tiny_lm):
    resp = client.completions.create(model=tiny_lm.name, prompt="All:", max_tokens=10, temperature=0)
    direct = tiny_lm.complete(["All:"], max_new_tokens=10, temperature=0)[0]
    assert resp.choices[0].text == direct.text
    assert resp.usage.prompt_tokens == tiny_lm.count_tokens("All:") == direct.prompt_tokens
    assert resp.usage.completion_tokens == direct.completion_tokens
    pieces = client.completions.create(model=tiny_lm.name, prompt="All:", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == direct.text


def test_embeddings(client, tiny_lm):
    texts = ["Speak, speak.", "Resolved. resolved.", "All:"]
    resp = client.embeddings.create(model=tiny_lm.name, input=texts)  # the client asks for base64 by default
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_lm.embed(texts), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    floats = client.embeddings.create(model=tiny_lm.name, input="All:", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, got[2], rtol=1e-6, atol=1e-6)
    assert resp.usage.prompt_tokens == sum(tiny_lm.count_tokens(t) for t in texts)


def test_wrong_key(serve, tiny_lm):
    srv = serve(tiny_lm, api_key="right-key")
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=2)
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="right-key", max_retries=0) as good:
        assert good.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=2).choices


def test_malformed_requests(client, tiny_lm):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_lm.name, messages=[])
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_lm.name, messages=HELLO, temperature="hot")  # type: ignore[arg-type]
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_lm.name, messages=HELLO, max_tokens=tiny_lm.max_context + 1)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "model_not_found"
