"""``lmforge serve``: argument checks, clear errors, and the real command serving a run folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from serving_fakes import free_port

from lmforge.cli.main import COMMANDS, main


def test_serve_is_a_command_with_help(capsys):
    assert "serve" in COMMANDS
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--api-key", "--max-concurrency", "--max-queue", "--max-batch",
                   "--no-batching", "--threads", "127.0.0.1"):
        assert option in out


@pytest.mark.parametrize("argv,needle", [
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--max-batch", "0"], "--max-batch"),
    (["--threads", "0"], "--threads"),
    (["--port", "70000"], "--port"),
])
def test_bad_options_are_one_line_errors(tiny_run_dirs, capsys, argv, needle):
    code = main(["serve", str(tiny_run_dirs["transformer"]), *argv])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_a_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    code = main(["serve", str(tmp_path / "no-such-run"), "--port", str(free_port())])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and "no-such-run" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_command_serves_a_run_with_a_key(tiny_run_dirs):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LMFORGE_API_KEY": "cli-key"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(tiny_run_dirs["lstm"]), "--port",
                             str(port), "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                health = httpx.get(url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health.json()["model"] == "tiny-lstm"
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer cli-key"}).json()
        assert models["data"][0]["lmforge"] == {"kind": "lm", "max_context": None}
        reply = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer cli-key"},
                           json={"messages": [{"role": "user", "content": "All:"}], "max_tokens": 5}, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 5
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
