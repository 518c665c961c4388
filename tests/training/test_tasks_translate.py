"""TranslationTask: the Task contract (batches, ranks, resumption), the loss and the evaluation figures."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import Seq2SeqLSTMConfig
from lmforge.errors import DataError
from lmforge.models import build_model
from lmforge.training.tasks import Task
from lmforge.training.tasks_translate import TranslationTask


def _pairs(n: int, seed: int):
    rng = random.Random(seed)
    src = [[rng.randrange(8, 30) for _ in range(rng.randint(1, 12))] + [3] for _ in range(n)]
    tgt = [[rng.randrange(8, 30) for _ in range(rng.randint(1, 12))] for _ in range(n)]
    return src, tgt


def _task(**kw) -> TranslationTask:
    src, tgt = _pairs(300, 0)
    vsrc, vtgt = _pairs(40, 1)
    return TranslationTask(src, tgt, vsrc, vtgt, pad_id=0, bos_id=2, eos_id=3, max_tokens=kw.pop("max_tokens", 96),
                           seed=5, **kw)


def _model():
    return build_model(Seq2SeqLSTMConfig(src_vocab_size=30, tgt_vocab_size=30, emb_dim=8, hidden_dim=16,
                                         num_layers=1, dropout=0.0, attention="dot"))


def _key(batch) -> tuple:
    return tuple(map(tuple, batch.src.tolist())), tuple(map(tuple, batch.tgt_out.tolist()))


def test_is_a_task_and_an_epoch_covers_every_pair_once() -> None:
    task = _task()
    assert isinstance(task, Task)
    task.setup(device=torch.device("cpu"), rank=0, world_size=1, grad_accum=1)
    seen = []
    for _ in range(int(task.steps_per_epoch())):
        (b,) = task.next_batches()
        assert b.src.numel() <= 96 and b.tgt_in.numel() <= 96  # the token budget holds on both sides
        seen += [tuple(r) for r in b.tgt_out.tolist()]
    src, tgt = _pairs(300, 0)
    want = sorted(tuple(t + [3] + [-100] * 0) for t in tgt)
    assert sorted(tuple(x for x in r if x != -100) for r in seen) == want
    assert task.epoch == 0
    task.next_batches()
    assert task.epoch == 1


def test_ranks_and_micro_batches_split_the_same_global_sequence() -> None:
    single = _task()
    single.setup(device=torch.device("cpu"), rank=0, world_size=1, grad_accum=4)
    ranks = [_task(), _task()]
    for r, t in enumerate(ranks):
        t.setup(device=torch.device("cpu"), rank=r, world_size=2, grad_accum=2)
    for _ in range(5):
        whole = [_key(b) for b in single.next_batches()]
        r0, r1 = ranks[0].next_batches(), ranks[1].next_batches()
        assert [_key(r0[0]), _key(r1[0]), _key(r0[1]), _key(r1[1])] == whole


def test_state_dict_resumes_the_data_position() -> None:
    a = _task()
    a.setup(device=torch.device("cpu"), rank=0, world_size=1, grad_accum=1)
    for _ in range(int(a.steps_per_epoch()) + 3):  # into the second epoch
        a.next_batches()
    b = _task()
    b.setup(device=torch.device("cpu"), rank=0, world_size=1, grad_accum=1)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert _key(a.next_batches()[0]) == _key(b.next_batches()[0])


def test_loss_is_token_level_cross_entropy_with_label_smoothing() -> None:
    task = _task(label_smoothing=0.1)
    task.setup(device=torch.device("cpu"), rank=0, world_size=1, grad_accum=1)
    model = _model().eval()
    (batch,) = task.next_batches()
    logits = model(batch.src, batch.tgt_in)
    mask = batch.tgt_out != -100
    logp = logits.log_softmax(-1)[mask]  # (N, V) real positions only
    gold = batch.tgt_out[mask]
    nll = -logp.gather(1, gold[:, None]).squeeze(1)
    manual = (0.9 * nll - 0.1 * logp.mean(-1)).mean()
    assert task.loss(model, batch).item() == pytest.approx(manual.item(), rel=1e-5)
    assert task.batch_tokens(batch) == int(mask.sum())


def test_evaluate_reports_loss_and_perplexity_over_real_tokens() -> None:
    task = _task()
    model = _model()
    model.train()
    figs = task.evaluate(model, max_batches=None)
    assert model.training  # the mode is restored
    model.eval()
    total, count = 0.0, 0
    for rows in task._val_batches:
        b = task._collate(rows, task.val_src, task.val_tgt)
        total += F.cross_entropy(model(b.src, b.tgt_in).flatten(0, 1), b.tgt_out.flatten(), ignore_index=-100,
                                 reduction="sum").item()
        count += b.num_tokens
    assert figs["loss"] == pytest.approx(total / count, rel=1e-5)
    assert figs["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert figs["tokens"] == count == sum(len(t) + 1 for t in task.val_tgt)
    quick = task.evaluate(model, max_batches=2)
    assert quick["tokens"] < count and quick == task.evaluate(model, max_batches=2)


def test_empty_data_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no training pairs"):
        TranslationTask([], [], [[5, 3]], [[6]], pad_id=0, bos_id=2, eos_id=3)
