"""The collector, the wandb dashboards, the figures, the report and the notebook, on a real
4-job sweep (two algorithms x two learning rates, wandb offline)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alignsweep.results import rundir

from .wandb_log import history, records, run_record, strings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, sft_cache) -> Path:
    cwd = tmp_path_factory.mktemp("collect")
    env = dict(os.environ, TQDM_DISABLE="1")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "alignsweep", "-m", "algo=dpo,simpo", "train.lr=5e-4,1e-3", "logger=wandb",
         "hydra.sweep.dir=sweep", f"paths.cache_dir={sft_cache}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wandb summary run:" in proc.stdout
    return cwd / "sweep"


def test_table_has_a_row_per_checkpoint_and_the_varying_hyperparameters(sweep):
    table = pd.read_parquet(sweep / "results.parquet")
    assert len(table) == 4 * 6 and table["run"].nunique() == 4
    assert set(table["status"]) == {"completed"}
    assert sorted(table["cfg.train.lr"].unique()) == [5e-4, 1e-3]  # varies, so it is a column
    # the worker records the model's size (every parameter of the policy) for the scaling table
    assert table["model_params"].nunique() == 1 and table["model_params"].iloc[0] > 10_000
    assert not any(c.startswith("cfg.paths") for c in table.columns)
    for column in ("algo", "model", "beta", "step", "epoch", "progress", "sqrt_kl", "sqrt_kl_se", "win_rate",
                   "win_rate_se", "lc_win_rate", "lc_win_rate_se", "lc_note", "response_length", "chosen_logp",
                   "rejected_logp", "train_loss"):
        assert column in table.columns, column
    csv = pd.read_csv(sweep / "results.csv", dtype={"run": str})
    pd.testing.assert_frame_equal(csv[["run", "step", "win_rate"]], table[["run", "step", "win_rate"]],
                                  check_dtype=False)
    fits = pd.read_csv(sweep / "fits.csv")
    assert set(fits["form"]) == {"log", "quadratic"} and set(fits["checkpoints"]) == {"final", "all"}
    for name in ("fig1_overoptimization", "fig2_length", "fig3_dynamics", "fig4_likelihood"):
        for suffix in (".png", ".svg"):
            assert (sweep / "figures" / f"{name}{suffix}").stat().st_size > 5_000


def test_wandb_shows_the_same_numbers_as_the_table(sweep):
    table = pd.read_parquet(sweep / "results.parquet")
    for run, rows in table.groupby("run"):
        logged = history(sweep / str(run))
        assert [h["step"] for h in logged] == rows["step"].tolist()
        for h, (_, row) in zip(logged, rows.iterrows()):
            for key in ("win_rate", "sqrt_kl", "kl", "chosen_logp", "response_length", "lc_win_rate"):
                if key in h or row[key] == row[key]:  # a NaN lc_win_rate (too few verdicts) may be left out
                    assert h[key] == pytest.approx(row[key], nan_ok=True), (run, key)
    # the sweep's summary run holds the collected table itself
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/results_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    frame = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert len(frame) == len(table)
    merged = frame.merge(table, on=["run", "step"], suffixes=("_wandb", ""))
    assert len(merged) == len(table)
    for key in ("win_rate", "sqrt_kl", "train_loss", "lc_win_rate", "lc_win_rate_se"):
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
                   for a, b in zip(merged[f"{key}_wandb"].astype(float), merged[key].astype(float))
                   if not (math.isnan(a) and math.isnan(b)))


def _config(record: dict) -> dict:
    """A run record's config as {key: value} (the record log keeps values as JSON)."""
    config = record["config"]
    config = json.loads(config) if isinstance(config, str) else config
    config = config.get("update", config)

    def value(node):
        return node["value"] if isinstance(node, dict) and set(node) <= {"value", "desc"} and "value" in node else node

    return {k: value(v) for k, v in config.items()}




def test_wandb_runs_are_grouped_tagged_and_hold_what_ran(sweep):
    """One group per sweep (experiment + short id, not the timestamp), filterable tags, the resolved
    values without local paths or dry_run as config, hyperparameters in config and not in history."""
    summary = run_record(sweep)
    group = summary["run_group"]
    assert group.startswith("sweep-") and len(group) == len("sweep-") + 6 and group != sweep.name
    for run in sorted(p for p in sweep.iterdir() if (p / rundir.CONFIG).exists()):
        record = run_record(run)
        assert record["run_group"] == group
        config = _config(record)
        algo = config["algo"]["name"]
        assert set(record["tags"]) >= {f"algo:{algo}", "model:embedded_tiny", "data:embedded", "judge:gold",
                                       "experiment:sweep"}
        assert "paths" not in config and "dry_run" not in config and config["beta"] == config["algo"]["beta"]
        assert not [s for s in strings(config) if s.startswith("/") or str(sweep) in s], config
        logged = history(run)
        assert logged and all("win_rate" in h and "sqrt_kl" in h for h in logged)
        for h in logged:
            assert not {"beta", "alpha", "gamma", "seed"} & set(h), sorted(h)  # config, not history


def test_the_summary_run_has_a_config_the_headline_figure_fits_and_samples(sweep):
    record = run_record(sweep)
    assert record["job_type"] == "summary" and "summary" in record["tags"]
    config = _config(record)
    assert config["experiment"] == "sweep" and config["runs"] == 4 and config["algo"] == ["dpo", "simpo"]
    assert config["train.lr"] == [5e-4, 1e-3] and not [s for s in strings(config) if s.startswith("/")]
    logged = [r["history"]["item"] for r in records(sweep) if r["type"] == "history"]
    keys = {key.split(".")[0] for key in set().union(*logged)}  # an image or table is logged as KEY._type, ...
    assert {"winrate_vs_sqrt_kl", "fits", "results", "samples", "fig1_overoptimization"} <= keys, sorted(keys)
    samples = list(sweep.glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    frame = json.loads(samples[0].read_text())
    assert {"run", "step", "prompt", "sample", "verdict"} <= set(frame["columns"]) and frame["data"]
    # collecting again continues the same summary run: still one to sync
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "alignsweep", "collect", str(sweep)], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    assert len(list(sweep.glob("wandb/offline-run-*"))) == 1 and run_record(sweep)["run_group"] == record["run_group"]


def test_sync_lists_every_run_and_fails_in_one_line_without_a_server(sweep, tmp_path):
    script = Path(sys.executable).with_name("alignsweep")
    proc = subprocess.run([str(script), "sync", str(sweep), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = [Path(line) for line in proc.stdout.splitlines() if "offline-run-" in line]
    expected = sorted(sweep.glob("*/wandb/offline-run-*")) + sorted(sweep.glob("wandb/offline-run-*"))
    assert listed == expected and len(listed) == 5  # four jobs and the summary run
    assert "4 job run(s), 1 summary run(s)" in proc.stdout
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = dict(os.environ, WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    proc = subprocess.run([str(script), "sync", str(sweep)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot reach the W&B server"), proc.stderr
    # a server that answers, but refuses the key (a real HTTP server on this machine)
    import http.server
    import threading

    class Refusing(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors": [{"message": "invalid api key"}]}')

        do_GET = do_POST = do_HEAD = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env["WANDB_BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
        proc = subprocess.run([str(script), "sync", str(sweep)], capture_output=True, text=True, timeout=300, env=env)
    finally:
        server.shutdown()
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: wandb sync of") and "401" in errors[0], errors
    env.pop("WANDB_API_KEY")
    env["NETRC"] = str(tmp_path / "no-netrc")
    proc = subprocess.run([str(script), "sync", str(sweep)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no W&B API key") and "Traceback" not in proc.stderr


def test_samples_are_collected_reported_and_logged_to_wandb(sweep):
    """Each checkpoint's samples (RUN_DIR/samples/step_NNNNNN.jsonl) reach samples.parquet, the
    report and each run's wandb Table, one row per evaluation prompt, the same text everywhere."""
    from alignsweep.analysis.report import samples_section

    table = pd.read_parquet(sweep / "results.parquet")
    samples = pd.read_parquet(sweep / "samples.parquet")
    for column in ("run", "step", "index", "prompt", "sample", "reference", "verdict", "length"):
        assert column in samples.columns, column
    evaluated = table.dropna(subset=["win_rate"])
    assert set(zip(samples["run"].astype(str), samples["step"])) == set(zip(evaluated["run"].astype(str), evaluated["step"]))
    for (run, step), kept in samples.groupby(["run", "step"]):
        row = evaluated[(evaluated["run"].astype(str) == str(run)) & (evaluated["step"] == step)].iloc[0]
        assert len(kept) == row["n_eval"] and kept["verdict"].isin([0.0, 0.5, 1.0]).all()
        assert kept["verdict"].mean() == pytest.approx(row["win_rate"])  # the verdicts the win rate counts
        assert kept["prompt"].str.len().gt(0).all() and kept["length"].ge(0).all()
    section = samples_section(sweep)
    assert "no samples kept" not in section and section.count("<h3>") == samples["run"].nunique()
    first = samples.iloc[0]
    logged = sorted((sweep / str(first["run"])).glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    assert len(logged) == samples[samples["run"] == first["run"]]["step"].nunique()
    frames = [json.loads(p.read_text()) for p in logged]
    texts = {s for f in frames for s in pd.DataFrame(f["data"], columns=f["columns"])["sample"]}
    assert set(samples[samples["run"] == first["run"]]["sample"]) == texts


def test_collecting_a_copied_half_finished_damaged_sweep(sweep, tmp_path):
    laptop = tmp_path / "copied"
    shutil.copytree(sweep, laptop, ignore=shutil.ignore_patterns("wandb"))
    runs = sorted(p for p in laptop.iterdir() if (p / rundir.CONFIG).exists())
    # run 0: still running after three checkpoints, killed mid-line
    lines = (runs[0] / rundir.METRICS).read_text().splitlines(keepends=True)
    (runs[0] / rundir.METRICS).write_text("".join(lines[:3]) + lines[3][:20])
    rundir.write_status(runs[0], state="running")
    # run 1: one corrupt line in the middle; run 2: an unreadable config
    lines = (runs[1] / rundir.METRICS).read_text().splitlines(keepends=True)
    lines[2] = "{not json\n"
    (runs[1] / rundir.METRICS).write_text("".join(lines))
    (runs[2] / rundir.CONFIG).write_text("algo: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "alignsweep", "collect", str(laptop)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{runs[1] / rundir.METRICS}:3" in proc.stderr and str(runs[2] / rundir.CONFIG) in proc.stderr
    table = pd.read_csv(laptop / "results.csv")
    per_run = table.groupby("run").agg(rows=("status", "size"), status=("status", "first"))
    assert per_run.loc[int(runs[0].name)].tolist() == [3, "running"]
    assert per_run.loc[int(runs[1].name)].tolist() == [5, "completed"]
    assert per_run.loc[int(runs[2].name)].tolist() == [1, "unreadable"]
    assert per_run.loc[int(runs[3].name)].tolist() == [6, "completed"]
    # incremental: the run goes on, collecting again picks up its new rows
    (runs[0] / rundir.METRICS).write_text("".join((sweep / runs[0].name / rundir.METRICS).read_text()))
    rundir.write_status(runs[0], state="completed")
    subprocess.run([sys.executable, "-m", "alignsweep", "collect", str(laptop)], capture_output=True, check=True)
    table = pd.read_csv(laptop / "results.csv")
    assert (table["run"] == int(runs[0].name)).sum() == 6


def test_report_prints_tables_and_writes_a_self_contained_page(sweep):
    proc = subprocess.run([sys.executable, "-m", "alignsweep", "report", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Results (per run)" in proc.stdout and "Scaling-law fits" in proc.stdout
    page = (sweep / "report.html").read_text()
    # the headline figure and the four figures, inlined; the tables
    assert page.count("data:image/png;base64,") == 5 and "<table" in page
    assert page.index("id='headline'") < page.index("id='results'") < page.index("id='fits'")
    assert "fit_a (slope)" in page and "fit_b (curvature)" in page  # not the losses' alpha and beta


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is missing: .ci/run installs Debian's chromium for this test")
        pytest.skip("no chromium here (apt-get install -y chromium)")
    return found


def test_the_report_opens_in_a_browser_with_every_section(sweep, tmp_path):
    """Headless Chromium loads report.html as a reader would; every section is on the page and every
    image decodes (its natural width, read by the page's own script after load)."""
    subprocess.run([sys.executable, "-m", "alignsweep", "report", str(sweep)], capture_output=True, check=True)
    page = sweep / "report.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const w = [...document.images].map(i => i.naturalWidth);"
        " document.body.setAttribute('data-image-widths', w.join(',')); });</script></body>"))
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for section in ("headline", "results", "fits", "figures", "samples", "archive"):
        assert f'id="{section}"' in dom, section
    widths = [int(w) for w in dom.split('data-image-widths="')[1].split('"')[0].split(",")]
    assert len(widths) == 5 and all(w > 100 for w in widths), widths
    assert "python -m alignsweep -m" in dom and "code commit" in dom  # what an archive needs
    assert "algorithms: dpo, simpo" in dom and "evaluation prompts per checkpoint:" in dom


def test_the_notebook_runs_on_a_collected_sweep(sweep):
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "overoptimization.ipynb", as_version=4)
    os.environ["ALIGNSWEEP_SWEEP"] = str(sweep)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        os.environ.pop("ALIGNSWEEP_SWEEP")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs) == 4


def test_the_notebook_picks_the_newest_collected_sweep_and_runs_through_make(sweep, tmp_path):
    """A folder of sweeps whose newest entry is a dry run's empty folder: the notebook uses the
    newest collected one (it died with KeyError: 'run' before); `make notebook SWEEP=...` runs it."""
    sweeps = tmp_path / "outputs" / "sweeps"
    shutil.copytree(sweep, sweeps / "2026-01-01_00-00-00")
    (sweeps / "2026-01-02_00-00-00").mkdir()  # newer, never collected
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "notebook", f"SWEEP={sweeps}"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import nbformat

    executed = nbformat.read(sweeps / "overoptimization.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "2026-01-01_00-00-00" in text and "2026-01-02" not in text
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
