"""Acceptance: lm-evaluation-harness's ``local-completions`` model, unmodified and given only ``model`` and
``base_url``, scores a multiple-choice task against a real ``lmforge serve``, and every per-choice
log-likelihood it records equals the one :meth:`lmforge.api.LM.loglikelihood` computes for the same text."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from serving_fakes import lmforge_serve

lm_eval = pytest.importorskip("lm_eval")

DOCS = [
    {"question": "First Citizen: Before we", "choices": [" proceed", " famish", " speak"], "answer": 0},
    {"question": "All: Speak,", "choices": [" speak.", " resolved.", " die"], "answer": 0},
    {"question": "You are all resolved rather to", "choices": [" die", " hear", " all"], "answer": 0},
]
TASK = """task: lmforge_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _args(sample: dict) -> list[tuple[str, str]]:
    out = []
    for arg in sample["arguments"]:
        if isinstance(arg, dict):
            out.append((arg["arg_0"], arg["arg_1"]))
        else:
            out.append((arg[0], arg[1]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_lm_eval_local_completions_matches_the_python_api(tiny_run_dirs, tmp_path, family, monkeypatch):
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    from lmforge.api import load

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "lmforge_mc.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    run = tiny_run_dirs[family]
    name = Path(run).resolve().name
    with lmforge_serve(run) as url:
        results = evaluator.simple_evaluate(
            model="local-completions", model_args=f"model={name},base_url={url}/v1/completions",
            tasks=["lmforge_mc"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
        metrics = httpx.get(url + "/metrics").text
    # lm-eval found the tokenizer endpoints from base_url alone and tokenized through the server
    assert 'lmforge_requests_total{route="/tokenize",status="200"}' in metrics
    assert 'lmforge_requests_total{route="/v1/completions",status="200"} 9' in metrics
    samples = results["samples"]["lmforge_mc"]
    assert len(samples) == len(DOCS)
    lm = load(run)
    checked = 0
    for sample in samples:
        for (context, continuation), resp in zip(_args(sample), sample["resps"]):
            recorded = resp[0][0] if isinstance(resp[0], (list, tuple)) else resp[0]
            expected, _greedy = lm.loglikelihood(context, continuation)
            assert float(recorded) == pytest.approx(expected, abs=1e-4)
            checked += 1
    assert checked == sum(len(d["choices"]) for d in DOCS)
    assert "acc,none" in results["results"]["lmforge_mc"]
