"""The budget-aware default of `lmforge train --task translate`: a small budget picks a small model, a GPU a
larger one, the schedule ends with the budget, the CLI prints the choice and why, and an explicit preset, config
file, model size or override is always obeyed."""

from __future__ import annotations

import pytest
import torch

from lmforge.cli.main import build_parser, main
from lmforge.cli.train import build_config
from lmforge.config import RunConfig, get_preset
from lmforge.config.translate_defaults import DEFAULT_CPU_BUDGET, FAST_BELOW, choose_translation_preset
from lmforge.models import build_model
from lmforge.models.io import count_parameters
from lmforge.utils import cpu_load
from lmforge.utils.cpu_load import _sampled_running as sampled_running, busy  # the real one: a fixture patches it


class _Cuda:
    def __init__(self, available: bool) -> None:
        self.available = available

    def is_available(self) -> bool:
        return self.available

    def is_bf16_supported(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _idle_machine(monkeypatch):
    from lmforge.cli import train as train_cli

    monkeypatch.setattr(cpu_load, "_sampled_running", lambda *a: None)  # the choice must not depend on the CI's load
    monkeypatch.setattr(train_cli.os, "getloadavg", lambda: (0.1, 0.1, 0.1))


def _config(argv: list[str], gpu: bool = False):
    parser, _ = build_parser("train")
    args = parser.parse_args(["--task", "translate", "--src", "a.en", "--tgt", "a.de", *argv])
    config, resume, choice = build_config(args, _Cuda(gpu))
    assert not resume
    return config, choice, choice.reason if choice is not None else None


def _params(config: RunConfig) -> int:
    model = config.model.model_copy(update={"src_vocab_size": 6000, "tgt_vocab_size": 6000})
    with torch.device("meta"):
        return count_parameters(build_model(model))


def test_a_small_budget_picks_a_small_model_and_the_schedule_fits_the_budget() -> None:
    small, _, note_small = _config(["--time-budget", "120"])
    big, _, note_big = _config(["--time-budget", "1200"])
    assert 120 < FAST_BELOW <= 1200
    assert _params(small) < 0.6 * _params(big)  # fewer, cheaper steps for a short budget
    assert small.train.time_budget == 120 and big.train.time_budget == 1200
    assert small.train.schedule == big.train.schedule == "cosine"  # decays over the time budget (time-aware)
    assert "translate-cpu-fast" in note_small and "120 s" in note_small and "translate-cpu " in note_big
    assert big.data.max_tokens == 2048 and big.train.label_smoothing == 0.1 and big.tokenizer.vocab_size == 6000
    assert big.model.share_embeddings and big.data.joint_vocab


def test_no_budget_on_a_cpu_trains_ten_minutes_and_a_gpu_gets_the_larger_preset() -> None:
    cpu, _, note = _config([])
    assert cpu.train.time_budget == DEFAULT_CPU_BUDGET and "default" in note
    assert cpu.model.d_model == 192  # ten minutes pick the small tier
    gpu, _, note_gpu = _config(["--time-budget", "600"], gpu=True)
    assert "translate-gpu" in note_gpu and _params(gpu) > 1.5 * _params(cpu) and gpu.data.max_tokens > cpu.data.max_tokens
    steps, _, note_steps = _config(["--max-steps", "50"])
    assert steps.train.time_budget is None and steps.train.max_steps == 50 and "step" in note_steps
    lstm, _, _ = _config(["--model", "lstm", "--time-budget", "120"])
    assert lstm.model.family == "seq2seq_lstm" and lstm.train.time_budget == 120
    assert _params(lstm) < _params(_config(["--model", "lstm", "--time-budget", "1200"])[0])


def test_an_explicit_preset_config_size_or_override_is_obeyed(tmp_path) -> None:
    cfg, _, note = _config(["--preset", "seq2seq_transformer-tiny", "--time-budget", "60"])
    assert note is None and cfg.model == RunConfig.parse(get_preset("seq2seq_transformer-tiny")).model
    assert cfg.train.time_budget == 60
    path = tmp_path / "run.yaml"
    path.write_text("task: translate\nmodel: {family: seq2seq_lstm, emb_dim: 24, hidden_dim: 32, num_layers: 1}\n")
    cfg, _, note = _config(["--config", str(path), "--time-budget", "60"])
    assert note is None and (cfg.model.family, cfg.model.emb_dim, cfg.model.hidden_dim) == ("seq2seq_lstm", 24, 32)
    cfg, _, note = _config(["--model-size", "medium", "--time-budget", "60"])
    assert note is None and cfg.model.d_model == get_preset("seq2seq_transformer-medium")["model"]["d_model"]
    cfg, _, note = _config(["--time-budget", "120", "model.d_model=96", "train.lr=5e-4", "--vocab-size", "3000"])
    assert note is not None and (cfg.model.d_model, cfg.train.lr, cfg.tokenizer.vocab_size) == (96, 5e-4, 3000)


def test_separate_vocab_flag_unshares_the_embeddings() -> None:
    cfg, _, _ = _config(["--separate-vocab", "--tokenizer", "unigram"])
    assert not cfg.data.joint_vocab and not cfg.model.share_embeddings and cfg.tokenizer.kind == "unigram"


def test_the_cli_prints_the_choice_and_why(monkeypatch, capsys) -> None:
    seen = {}

    def fake_train(config, resume=False, progress=None):  # the choice is under test, not training
        seen["config"] = config
        return {"steps": 0, "parameters": 0, "run_dir": config.out_dir, "interrupted": False}

    from lmforge.workflows import translate_run

    monkeypatch.setattr(translate_run, "train_translation", fake_train)
    assert main(["train", "--task", "translate", "--src", "a.en", "--tgt", "a.de", "--time-budget", "90", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "chose preset translate-cpu-fast" in err and "90 s of training" in err and "--preset" in err
    assert seen["config"].train.time_budget == 90


def test_a_busy_cpu_counts_for_its_share_and_trains_with_one_thread() -> None:
    busy = choose_translation_preset(1200.0, load=(9.0, 2))  # about 1200 * 2 / 10 = 240 s of an idle machine
    idle = choose_translation_preset(1200.0, load=(0.3, 2))
    assert busy.threads == 1 and "1 thread" in busy.reason and "9.0" in busy.reason and "240 s" in busy.reason
    assert idle.threads is None and "thread" not in idle.reason
    assert busy.preset == "translate-cpu-fast" and idle.preset == "translate-cpu"
    assert busy.config["train"]["time_budget"] == idle.config["train"]["time_budget"] == 1200  # still 1200 s of training
    assert choose_translation_preset(1200.0, load=(1.5, 2)).preset == "translate-cpu"  # 960 s of compute: standard
    gpu = choose_translation_preset(600.0, device="cuda", load=(9.0, 2))
    assert gpu.threads is None and gpu.preset == "translate-gpu"


def test_the_cli_reads_the_load(monkeypatch) -> None:
    from lmforge.cli import train as train_cli

    monkeypatch.setattr(train_cli.os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    monkeypatch.setattr(train_cli.os, "cpu_count", lambda: 2)
    cfg, choice, note = _config(["--time-budget", "1200"])
    assert choice.preset == "translate-cpu-fast" and choice.threads == 1 and "load 30.0 on 2 cores" in note


def test_the_load_is_the_running_tasks_now_not_the_lagging_average(tmp_path, monkeypatch) -> None:
    proc = tmp_path / "loadavg"
    proc.write_text("9.50 6.00 3.00 1/230 4242\n")  # a long job just ended: the average still reports it
    assert sampled_running(0.0, 3, str(proc)) == 0.0  # only the reader itself runs
    proc.write_text("0.20 0.10 0.00 4/230 4242\n")  # three tasks started a moment ago
    assert sampled_running(0.0, 3, str(proc)) == 3.0
    assert sampled_running(0.0, 3, str(tmp_path / "missing")) is None
    monkeypatch.setattr(cpu_load, "_sampled_running", lambda *a: 0.0)
    monkeypatch.setattr(cpu_load.os, "getloadavg", lambda: (9.5, 6.0, 3.0))
    monkeypatch.setattr(cpu_load.os, "cpu_count", lambda: 2)
    assert cpu_load.machine_load() == (0.0, 2) and not busy(cpu_load.machine_load())
    monkeypatch.setattr(cpu_load, "_sampled_running", lambda *a: None)  # no /proc: the load average
    assert cpu_load.machine_load() == (9.5, 2)


def test_decoding_commands_use_one_thread_on_a_busy_cpu(monkeypatch) -> None:
    from lmforge.cli import train as train_cli
    from lmforge.cli.translate import apply_threads
    from lmforge.utils.cpu_load import busy, cpu_share, threads_for_load

    assert busy((2.0, 2)) and not busy((0.9, 2)) and not busy((50.0, 1))  # one core: nothing to wait for
    assert cpu_share((3.0, 2)) == 0.5 and cpu_share((0.5, 2)) == 1.0
    assert threads_for_load((9.0, 2)) == 1 and threads_for_load((0.1, 2)) is None and threads_for_load(None) is None
    apply_threads(2)
    assert torch.get_num_threads() == 2  # an explicit count wins
    monkeypatch.setattr(train_cli.os, "getloadavg", lambda: (12.0, 12.0, 12.0))
    monkeypatch.setattr(train_cli.os, "cpu_count", lambda: 2)
    apply_threads(None)
    assert torch.get_num_threads() == 1


def test_the_library_choice_checks_its_input() -> None:
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="positive"):
        choose_translation_preset(0.0)
    with pytest.raises(ConfigError, match="family"):
        choose_translation_preset(60.0, family="gru")
