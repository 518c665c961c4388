"""Run folders: round trip, atomic saves, corrupted, truncated and mismatched checkpoints."""

import pytest
import torch

from lmforge.errors import CheckpointError
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
from lmforge.training import checkpoint as ckpt
from lmforge.training.checkpoint import load_run, load_trainer_state, save_run, save_trainer_state


def _run(tmp_path, tiny_config, family="transformer"):
    cfg = tiny_config(family, out_dir=str(tmp_path / "run"))
    tok = train_tokenizer("char", ["abcdefghijklmnopqrstuvwxyzABCDEF"])
    cfg = cfg.with_overrides({"model.vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    return cfg, build_model(cfg.model), tok


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_round_trip_gives_the_same_outputs(tmp_path, tiny_config, family):
    cfg, model, tok = _run(tmp_path, tiny_config, family)
    save_run(cfg.out_dir, cfg, model, tok, trainer_state={"step": 3}, summary={"val_loss": 1.5})
    run = load_run(cfg.out_dir)
    x = torch.randint(0, tok.vocab_size, (2, 8))
    model.eval()
    assert torch.equal(run.model(x)[0], model(x)[0])
    assert run.config == cfg and run.summary == {"val_loss": 1.5} and not run.model.training
    assert run.tokenizer.encode("abc") == tok.encode("abc")
    assert load_trainer_state(tmp_path / "run" / ckpt.STATE_FILE)["weights_sha256"] == ckpt.file_sha256(
        tmp_path / "run" / ckpt.WEIGHTS_FILE)


def test_compiled_and_ddp_wrappers_save_plain_names(tmp_path, tiny_config):
    cfg, model, tok = _run(tmp_path, tiny_config)
    compiled = torch.compile(model)  # lazy: nothing is compiled until a forward pass
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_run(cfg.out_dir, cfg, compiled, tok)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / ckpt.WEIGHTS_FILE), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    load_run(cfg.out_dir)


def test_save_killed_half_way_leaves_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    cfg, model, tok = _run(tmp_path, tiny_config)
    save_run(cfg.out_dir, cfg, model, tok, trainer_state={"step": 1, "w": torch.ones(3)})
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_run(cfg.out_dir, cfg, model, tok, trainer_state={"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]  # no temp files left
    # the trainer state is the old one, whole; the weights were already replaced, so resuming must refuse
    state = load_trainer_state(tmp_path / "run" / ckpt.STATE_FILE)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert (tmp_path / "run" / ckpt.STATE_FILE).read_bytes() == before[ckpt.STATE_FILE]
    assert state["weights_sha256"] != ckpt.file_sha256(tmp_path / "run" / ckpt.WEIGHTS_FILE)
    load_run(cfg.out_dir)  # the weights themselves are whole


def test_weights_write_killed_keeps_old_weights(tmp_path, tiny_config, monkeypatch):
    cfg, model, tok = _run(tmp_path, tiny_config)
    save_run(cfg.out_dir, cfg, model, tok)
    old = (tmp_path / "run" / ckpt.WEIGHTS_FILE).read_bytes()
    import lmforge.models.weights as st  # the module that writes the weights

    def dying_save_file(tensors, filename, metadata=None):
        open(filename, "wb").write(b"\x00" * 100)
        raise RuntimeError("disk full")

    monkeypatch.setattr(st, "save_file", dying_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        save_run(cfg.out_dir, cfg, model, tok)
    monkeypatch.undo()
    assert (tmp_path / "run" / ckpt.WEIGHTS_FILE).read_bytes() == old
    load_run(cfg.out_dir)


def test_truncated_and_corrupted_trainer_state(tmp_path):
    path = tmp_path / "trainer_state.pt"
    save_trainer_state(path, {"step": 5, "t": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_trainer_state(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_trainer_state(path)
    torch.save({"something": 1}, path)
    with pytest.raises(CheckpointError, match="not an lmforge trainer state"):
        load_trainer_state(path)
    with pytest.raises(CheckpointError, match="no trainer state"):
        load_trainer_state(tmp_path / "missing.pt")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "trainer_state.pt"
    torch.save({"format": 1, "step": 0, "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_trainer_state(path)  # weights_only=True refuses arbitrary objects


def test_truncated_weights_and_mismatched_runs(tmp_path, tiny_config):
    cfg, model, tok = _run(tmp_path, tiny_config)
    save_run(cfg.out_dir, cfg, model, tok)
    weights = tmp_path / "run" / ckpt.WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_run(cfg.out_dir)
    weights.write_bytes(good)
    # another vocabulary: a config that says 99 tokens against weights of the real vocabulary
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace(f"vocab_size: {tok.vocab_size}", "vocab_size: 99"))
    with pytest.raises(CheckpointError, match="vocab"):
        load_run(cfg.out_dir)
    # another family: LSTM weights under a Transformer config
    lcfg, lmodel, _ = _run(tmp_path, tiny_config, "lstm")
    save_run(tmp_path / "lstm", lcfg, lmodel, tok)
    (tmp_path / "run" / ckpt.WEIGHTS_FILE).write_bytes((tmp_path / "lstm" / ckpt.WEIGHTS_FILE).read_bytes())
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace("vocab_size: 99", f"vocab_size: {tok.vocab_size}"))
    with pytest.raises(CheckpointError, match="lstm"):
        load_run(cfg.out_dir)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an lmforge run folder"):
        load_run(tmp_path / "empty")
