"""Preflight (issue 17, case 12): before any job starts, each distinct model, tokenizer, dataset and
judge endpoint is checked once; one message per distinct failure, exit 2, in seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignsweep.launch.preflight import check_endpoint, preflight
from tests.openai_server import OpenAIServer
from tests.test_config import compose_cfg

USERS_COMMAND = ["-m", "algo=dpo,ipo,slic", "model=pythia_2_8b", "beta=0.01,0.1,1"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), TQDM_DISABLE="1", **extra)
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    return env


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:{port}"}],
                         ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_the_users_command_offline_fails_at_once_with_hf_download_advice(tmp_path, offline):
    """Observed: offline, the 9-job command took 4.1 minutes to print ModelNotFound nine times
    (each job retried the hub), then exited 0, advising `huggingface-cli`."""
    env = _offline_env(tmp_path, **{k: v.format(port=_closed_port()) for k, v in offline.items()})
    out, err = tmp_path / "out", tmp_path / "err"
    start = time.monotonic()
    with out.open("w") as o, err.open("w") as e:  # files, not pipes: the user's prompt returns when this exits
        code = subprocess.run([sys.executable, "-m", "alignsweep", *USERS_COMMAND, "logger=none", "hydra.sweep.dir=sweep"],
                              cwd=tmp_path, env=env, stdout=o, stderr=e, timeout=120).returncode
    elapsed = time.monotonic() - start
    stderr = err.read_text()
    assert code == 2 and elapsed < 60, (code, elapsed, stderr[-2000:])
    assert stderr.count("hf download EleutherAI/pythia-2.8b-deduped") == 1, stderr  # one message, not nine
    assert "9 job(s) need it" in stderr and "model.path=DIR" in stderr and "huggingface-cli" not in stderr
    assert "Traceback" not in stderr
    assert not list((tmp_path / "sweep").glob("*/status.json"))  # nothing was queued


@pytest.mark.parametrize("what", ["model", "judge"])
def test_a_single_run_is_preflighted_as_a_sweep_is(tmp_path, what):
    """A single run (no -m) offline, or with its judge down, is refused before it loads anything:
    one line, exit 2, no run directory (it went on to the worker and failed there before)."""
    env = _offline_env(tmp_path, HF_HUB_OFFLINE="1")
    args = (["model=pythia_2_8b"] if what == "model" else
            ["judge=llm", f"judge.base_url=http://127.0.0.1:{_closed_port()}/v1", "judge.api_key_env=null"])
    err = tmp_path / "err"
    with err.open("w") as e:
        code = subprocess.run([sys.executable, "-m", "alignsweep", *args, "logger=none", "hydra.run.dir=run",
                               f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=e, timeout=300).returncode
    stderr = err.read_text()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: the run was not started: "), stderr[-3000:]
    expected = "hf download EleutherAI/pythia-2.8b-deduped" if what == "model" else "does not answer"
    assert expected in lines[0] and "job(s) need it" not in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing written, nothing loaded


def test_each_distinct_model_and_dataset_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    configs = [compose_cfg("data=tldr", f"model={m}", f"beta={b}", "judge=gold")
               for m in ("pythia_1b", "pythia_2_8b") for b in (0.1, 1.0)]
    errors = preflight(configs)
    assert len(errors) == 4, errors  # two models, the pairs, the SFT demonstrations
    assert sum("trl-lib/tldr-preference" in e for e in errors) == 1
    assert any("--repo-type dataset" in e and "data.sft_path=DIR" in e for e in errors)
    assert all("(2 job(s) need it)" in e for e in errors if "pythia" in e)
    # a model in the local hub cache (the layout huggingface_hub writes) needs no hub
    snapshot = tmp_path / "hf" / "hub" / "models--EleutherAI--pythia-1b-deduped" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    assert not [e for e in preflight(configs) if "pythia-1b" in e]


def test_embedded_and_local_runs_need_nothing(tmp_path):
    assert preflight([compose_cfg(), compose_cfg("model=embedded_small"), compose_cfg("experiment=tree_mdp")]) == []
    assert preflight([compose_cfg(f"model.path={tmp_path}", "model=pythia_1b")]) == []


def test_the_judge_endpoint_is_asked_once(tmp_path, monkeypatch):
    server = OpenAIServer(chat=None).start()
    try:
        monkeypatch.setenv("PREFLIGHT_KEY", "sk-right")
        server.reset(required_key="sk-right")
        up = [compose_cfg("judge=llm", f"judge.base_url={server.url}", "judge.api_key_env=PREFLIGHT_KEY", f"beta={b}")
              for b in (0.1, 0.5, 1.0)]
        assert preflight(up) == [] and len(server.log) == 1  # three jobs, one request
        assert check_endpoint(server.url, "PREFLIGHT_KEY") is None
        server.reset(required_key="sk-other")
        refused = check_endpoint(server.url, "PREFLIGHT_KEY")
        assert refused and "refused the key" in refused and "PREFLIGHT_KEY" in refused
        assert "judge.api_key_env" in refused
        monkeypatch.delenv("PREFLIGHT_KEY")  # the variable named, but not set where the launch runs
        unset = check_endpoint(server.url, "PREFLIGHT_KEY")
        assert unset and "judge.api_key_env=PREFLIGHT_KEY is not set" in unset and "export PREFLIGHT_KEY" in unset
    finally:
        server.stop()
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    errors = preflight([compose_cfg("judge=llm", f"judge.base_url={down}", f"beta={b}") for b in (0.1, 1.0)])
    assert len(errors) == 1 and "does not answer" in errors[0] and "(2 job(s) need it)" in errors[0], errors
