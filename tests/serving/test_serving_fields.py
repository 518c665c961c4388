"""The OpenAI fields real clients send, against a real server on a tiny real model, checked against the model
itself (``log_softmax`` of its logits) and the tokenizer, plus vLLM's tokenizer endpoints and ``/metrics``."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import torch
import torch.nn.functional as F

USER = [{"role": "user", "content": "All:"}]


def _log_softmax(lm, ids):
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids]))
    return F.log_softmax(logits[0].float(), dim=-1)


@pytest.fixture
def client(serve, tiny_lm):
    with httpx.Client(base_url=serve(tiny_lm).url, timeout=60) as c:
        yield c


def test_chat_logprobs_equal_log_softmax_streamed_and_not(client, tiny_lm):
    body = {"messages": USER, "temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    plain = client.post("/v1/chat/completions", json=body).json()
    content = plain["choices"][0]["logprobs"]["content"]
    assert len(content) == plain["usage"]["completion_tokens"] == 8
    ids, _ = tiny_lm.chat_request(USER)
    gen = [tiny_lm.tokenizer.encode(c["token"])[0] for c in content]
    ref = _log_softmax(tiny_lm, ids + gen)
    for k, entry in enumerate(content):
        row = ref[len(ids) - 1 + k]
        assert entry["logprob"] == pytest.approx(float(row[gen[k]]), abs=1e-4)
        assert entry["bytes"] == list(entry["token"].encode())
        top = torch.topk(row, 2)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry["token"] == entry["top_logprobs"][0]["token"]  # greedy picks the most likely
    resp = client.post("/v1/chat/completions", json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in resp.text.split("\n") if line.startswith("data: {")]
    streamed = [e for ev in events for ch in ev["choices"] if ch["logprobs"] for e in ch["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=1e-6)


def test_completions_echo_scores_the_prompt(client, tiny_lm):
    """What lm-evaluation-harness sends: echo, logprobs and max_tokens 0 (or 1)."""
    prompt = "First Citizen:"
    ids = tiny_lm.tokenizer.encode(prompt)
    ref = _log_softmax(tiny_lm, ids)
    out = client.post("/v1/completions", json={"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0,
                                               "temperature": 0}).json()
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert "".join(lp["tokens"]) == prompt
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(ids))]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        assert max(lp["top_logprobs"][i].values()) == pytest.approx(float(ref[i - 1].max()), abs=1e-4)
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    # max_tokens 1 with echo: the prompt's entries, then the generated token's
    one = client.post("/v1/completions", json={"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1,
                                               "temperature": 0}).json()["choices"][0]
    assert len(one["logprobs"]["tokens"]) == len(ids) + 1
    assert one["logprobs"]["token_logprobs"][0] is None
    assert one["logprobs"]["token_logprobs"][1:-1] == pytest.approx(lp["token_logprobs"][1:], abs=1e-6)
    assert one["logprobs"]["token_logprobs"][-1] == pytest.approx(float(ref[-1].max()), abs=1e-4)


def test_token_id_prompts_equal_text_prompts(client, tiny_lm):
    ids = tiny_lm.tokenizer.encode("All:")
    body = {"temperature": 0, "max_tokens": 6}
    text = client.post("/v1/completions", json={**body, "prompt": "All:"}).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json={**body, "prompt": ids}).json()["choices"][0]["text"] == text
    two = client.post("/v1/completions", json={**body, "prompt": [ids, ids], "n": 2}).json()["choices"]
    assert [c["index"] for c in two] == [0, 1, 2, 3] and {c["text"] for c in two} == {text}


def test_n_seed_stop_logit_bias_user_and_response_format(client, tiny_lm):
    body = {"messages": USER, "temperature": 1.0, "seed": 5, "n": 3, "max_tokens": 12, "user": "u-1",
            "response_format": {"type": "text"}, "max_completion_tokens": 12}
    first = [c["message"]["content"] for c in client.post("/v1/chat/completions", json=body).json()["choices"]]
    again = [c["message"]["content"] for c in client.post("/v1/chat/completions", json=body).json()["choices"]]
    assert first == again and len(set(first)) == 3
    # logit_bias +100 on one token makes greedy decoding repeat it
    z = tiny_lm.tokenizer.encode("z")[0]
    out = client.post("/v1/completions", json={"prompt": "All:", "temperature": 0, "max_tokens": 5,
                                                "logit_bias": {str(z): 100}}).json()
    assert out["choices"][0]["text"] == "zzzzz"
    stopped = client.post("/v1/completions", json={"prompt": "All:", "temperature": 0, "max_tokens": 5,
                                                   "logit_bias": {str(z): 100}, "stop": "zz"}).json()
    assert stopped["choices"][0]["text"] == "" and stopped["choices"][0]["finish_reason"] == "stop"


def test_unsupported_fields_are_named(client):
    err = client.post("/v1/chat/completions", json={"messages": USER, "tools": [{"type": "function"}]})
    assert err.status_code == 400 and "tools" in err.json()["error"]["message"]
    assert "cannot call tools" in err.json()["error"]["message"]
    err = client.post("/v1/chat/completions", json={"messages": USER, "response_format": {"type": "json_object"}})
    assert err.status_code == 400 and "JSON" in err.json()["error"]["message"]


def test_no_batching_refuses_logprobs_by_name(serve, tiny_lm):
    with httpx.Client(base_url=serve(tiny_lm, batching=False).url, timeout=60) as c:
        assert c.get("/health").json()["batching"] is False
        err = c.post("/v1/chat/completions", json={"messages": USER, "logprobs": True, "max_tokens": 2})
        assert err.status_code == 400 and err.json()["error"]["param"] == "logprobs"
        assert c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_tokenizer_endpoints_as_vllm_has_them(client, tiny_lm):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<eos>" and info["vocab_size"] == tiny_lm.tokenizer.vocab_size
    tok = client.post("/tokenize", json={"prompt": "All:", "add_special_tokens": False,
                                         "return_token_strs": True}).json()
    assert tok["tokens"] == tiny_lm.tokenizer.encode("All:") and tok["count"] == 4
    assert tok["token_strs"] == list("All:") and tok["max_model_len"] == 64
    chat = client.post("/tokenize", json={"messages": USER}).json()
    assert chat["tokens"] == tiny_lm.chat_request(USER)[0]
    assert client.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "All:"}
    bad = client.post("/detokenize", json={"tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_metrics_in_prometheus_text_format(client):
    client.post("/v1/completions", json={"prompt": "All:", "max_tokens": 3, "temperature": 0, "stream": True})
    client.post("/v1/completions", json={"prompt": "All:", "max_tokens": 3, "temperature": 0})
    client.post("/v1/completions", json={"prompt": 5})
    text = client.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert lines['lmforge_requests_total{route="/v1/completions",status="200"}'] == "2"
    assert lines['lmforge_requests_total{route="/v1/completions",status="400"}'] == "1"
    assert lines["lmforge_prompt_tokens_total"] == "8" and lines["lmforge_generation_tokens_total"] == "6"
    assert lines["lmforge_time_to_first_token_seconds_count"] == "2"
    assert float(lines['lmforge_time_to_first_token_seconds_bucket{le="+Inf"}']) == 2
    assert math.isfinite(float(lines["lmforge_queue_depth"])) and lines["lmforge_active_sequences"] == "0.0"
    assert "# TYPE lmforge_time_to_first_token_seconds histogram" in text
