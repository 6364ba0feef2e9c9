"""`posttrain serve`'s process handling without vLLM: what it refuses before starting anything, the
errors of a server that dies or never answers (with its log's end), and a stop that kills what
ignores SIGTERM. tests/stages/test_serve.py runs the real vLLM server."""

import json
import sys
import time

import pytest

from posttrain import cli
from posttrain.serve import server


def test_a_missing_environment_names_make_setup(tmp_path):
    with pytest.raises(RuntimeError, match=r"run `make setup`"):
        server.find_env(tmp_path / "no-such-venv")


def test_what_vllm_cannot_load_is_refused_with_what_to_serve_instead(tmp_path):
    (tmp_path / "model-q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="does not load GGUF files"):
        server.check_model(tmp_path / "model-q8_0.gguf")
    (tmp_path / "sft" / "adapter").mkdir(parents=True)
    with pytest.raises(ValueError, match="export-merge"):
        server.check_model(tmp_path / "sft")
    with pytest.raises(FileNotFoundError):
        server.check_model(tmp_path / "nothing")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    server.check_model(tmp_path / "merged")


def test_the_flags_serve_sets_itself_are_refused_after_vllm(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert cli.main(["serve", str(tmp_path), "--vllm", "--dtype", "float32", "--port=9000"]) == 1
    assert "--port=9000" in capsys.readouterr().err


def test_the_command_line_binds_localhost_and_sizes_the_kv_cache(tmp_path):
    cmd = server.vllm_command(tmp_path / "python", tmp_path / "merged", host="127.0.0.1", port=8123, max_model_len=512,
                              kv_cache_gb=0.5, extra=["--dtype", "float32"])
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(2**29)
    assert cmd[-2:] == ["--dtype", "float32"] and "--max-model-len" in cmd


def test_a_server_that_dies_during_start_up_reports_the_end_of_its_log(tmp_path):
    script = ("print('loading')\nprint('RuntimeError: Unsupported CPU attention configuration: head_dim=16', "
              "flush=True)\nraise SystemExit(3)")
    proc = server.Server([sys.executable, "-c", script], "http://127.0.0.1:9", tmp_path / "vllm.log").start()
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code 3 before it served.*head_dim=16\n"
                                               r"hint: vLLM's CPU attention runs attention heads 32, 64"):
            proc.wait_ready(timeout=60, poll=0.1)
    finally:
        proc.stop()


def test_a_server_that_never_answers_times_out_and_its_whole_group_is_killed(tmp_path):
    # a server that ignores SIGTERM and has started a child of its own, as vLLM starts its engine
    script = ("import signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
              "print('still loading', flush=True)\ntime.sleep(120)\n")
    proc = server.Server([sys.executable, "-c", script], "http://127.0.0.1:9", tmp_path / "vllm.log").start()
    try:
        for _ in range(300):             # its child is running once it says so
            if "still loading" in proc.tail():
                break
            time.sleep(0.1)
        with pytest.raises(RuntimeError, match=r"(?s)did not answer .*/health within 1 s.*still loading"):
            proc.wait_ready(timeout=1, poll=0.1)
    finally:
        start = time.monotonic()
        code = proc.stop(grace=1)
    assert code == -9 and time.monotonic() - start < 10
    assert not server._group_alive(proc.proc.pid)
