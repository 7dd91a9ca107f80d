"""The pipeline as users run it: `alignpipe up`, then `prefect deployment run pipeline/...`,
against a real Prefect server and a real MLflow server on loopback ports (no mocks); then the
lineage read back through the MLflow client, caching, resume after a kill, and a failed stage."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import mlflow
import pytest

from conftest import QUICK, ROOT, check_three_runs, deployment_run, run_cli

pytestmark = pytest.mark.slow

FAST = ["sft.max_steps=20", "sft.save_steps=10", "preference.max_steps=4", "preference.save_steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`alignpipe up` on free ports; `alignpipe down` afterwards (and if anything fails)."""
    home = tmp_path_factory.mktemp("home")
    pp, mp = _free_port(), _free_port()
    up = run_cli("up", "--home", home, "--prefect-port", pp, "--mlflow-port", mp, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI: http://127.0.0.1:{pp}" in up.stdout and f"MLflow UI:  http://127.0.0.1:{mp}" in up.stdout
        env = {"PREFECT_API_URL": f"http://127.0.0.1:{pp}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mp}"}
        status = run_cli("status", "--home", home)
        assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        yield {"home": home, "env": env}
    finally:
        down = run_cli("down", "--home", home, timeout=120)
        assert down.returncode == 0, down.stderr
        assert "running" not in run_cli("status", "--home", home).stdout


def runs_of(experiment: str, parent: str | None = None) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=500)
    return [r for r in runs if parent is None or r.data.tags.get("mlflow.parentRunId") == parent]


def parent_of_flow_run(experiment: str, flow_run_id: str):
    return next(r for r in runs_of(experiment) if r.data.tags.get("alignpipe.prefect_flow_run_id") == flow_run_id)


@pytest.fixture(scope="module")
def full_run(servers):
    proc, flow_run_id = deployment_run(servers, "full", FAST)
    assert proc.returncode == 0 and "Completed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return flow_run_id


def test_full_deployment_records_the_lineage_from_metric_to_data(servers, full_run):
    client = mlflow.MlflowClient()
    parent = parent_of_flow_run("tiny", full_run)
    tags = parent.data.tags
    assert tags["alignpipe.deployment"] == "full" and tags["alignpipe.config_digest"] and tags["alignpipe.git_commit"]
    assert parent.info.status == "FINISHED"
    children = {r.info.run_name: client.get_run(r.info.run_id) for r in runs_of("tiny", parent.info.run_id)}
    assert set(children) == {"select", "sft", "dpo", "evaluate", "compare"}
    assert all(r.info.status == "FINISHED" for r in children.values())

    # Walk back from an evaluation metric to the data, the base model and the config.
    evaluate = children["evaluate"]
    assert "dpo/acc_seen" in evaluate.data.metrics
    scored = {
        client.get_logged_model(m.model_id).name: client.get_logged_model(m.model_id)
        for m in evaluate.inputs.model_inputs
    }
    assert {"sft", "dpo"} <= set(scored) and len(scored) == 3
    dpo_run = client.get_run(scored["dpo"].source_run_id)
    assert dpo_run.info.run_id == children["dpo"].info.run_id
    reference = client.get_logged_model(dpo_run.inputs.model_inputs[0].model_id)
    assert (
        reference.model_id == scored["sft"].model_id
        and dpo_run.data.tags["alignpipe.input_model.reference"] == reference.model_id
    )
    sft_run = client.get_run(reference.source_run_id)
    (train,) = [d for d in sft_run.inputs.dataset_inputs if any(t.value == "train" for t in d.tags)]
    sha = {t.key: t.value for t in train.tags}["sha256"]
    assert (
        sha
        == subprocess.run(
            ["sha256sum", str(ROOT / "data" / "sft.jsonl")], capture_output=True, text=True
        ).stdout.split()[0]
    )
    base = client.get_logged_model(sft_run.inputs.model_inputs[0].model_id)
    selected = json.loads(Path(client.download_artifacts(children["select"].info.run_id, "result.json")).read_text())
    assert base.tags["alignpipe.model_path"] == selected["model_path"]
    config = json.loads(Path(client.download_artifacts(sft_run.info.run_id, "config.json")).read_text())
    assert config["sft"]["trl"]["max_steps"] == 20
    assert (
        json.loads(Path(client.download_artifacts(sft_run.info.run_id, "environment.json")).read_text())["packages"][
            "trl"
        ]
        == "1.12.0"
    )
    # The produced models carry their files; the gate's verdict is on the parent run.
    assert any(a.path == "model.safetensors" for a in client.list_logged_model_artifacts(scored["dpo"].model_id))
    gate = json.loads(Path(client.download_artifacts(parent.info.run_id, "gate.json")).read_text())
    assert gate["candidate"] == "dpo" and gate["baseline"] == "sft" and tags["alignpipe.gate"] in ("passed", "failed")
    compare = children["compare"]
    assert {a.path for a in client.list_artifacts(compare.info.run_id)} >= {"comparison.png", "comparison.txt"}


def test_unchanged_rerun_skips_every_stage(servers, full_run):
    before = len(runs_of("tiny"))
    proc, flow_run_id = deployment_run(servers, "full", FAST)
    assert proc.returncode == 0, proc.stdout[-3000:]
    parent = parent_of_flow_run("tiny", flow_run_id)
    assert all(
        parent.data.tags[f"alignpipe.cached.{s}"] == "true" for s in ("select", "sft", "preference", "evaluate")
    )
    new = [r.info.run_name for r in runs_of("tiny")[before:]]
    assert sorted(new) == ["compare", "pipeline"]  # no stage ran again
    first = parent_of_flow_run("tiny", full_run)
    assert parent.data.tags["alignpipe.run.sft"] == first.data.tags["alignpipe.run.sft"]


def test_sft_only_deployment_and_a_failed_gate_keeps_the_champion(servers, full_run):
    client = mlflow.MlflowClient()
    # make the full run's model the champion first (a gate nothing can fail), then an SFT-only
    # run whose gate cannot pass: it is registered, but the alias stays where it was.
    proc, _ = deployment_run(servers, "full", FAST + ["promote.tolerance=1000"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    champion = client.get_model_version_by_alias("tiny", "champion")
    proc, flow_run_id = deployment_run(servers, "sft-only", FAST + ["promote.metrics=[acc_heldout,not_a_metric]"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    parent = parent_of_flow_run("tiny", flow_run_id)
    assert parent.data.tags["alignpipe.pipeline"] == "sft-only" and parent.data.tags["alignpipe.gate"] == "failed"
    children = {r.info.run_name for r in runs_of("tiny", parent.info.run_id)}
    assert "dpo" not in children and "evaluate" in children  # select and sft came from the cache
    evaluate = client.get_run(parent.data.tags["alignpipe.run.evaluate"])
    assert {k.split("/")[0] for k in evaluate.data.metrics if "/" in k} == {"base", "sft", "sft_vs_base"}
    assert client.get_model_version_by_alias("tiny", "champion").version == champion.version
    gate = json.loads(Path(client.download_artifacts(parent.info.run_id, "gate.json")).read_text())
    assert gate["registered"]["alias"] is None and not gate["passed"]


SCREENSHOTS = ROOT / ".alignpipe" / "screenshots"  # git-ignored; kept after the test for a look
EXPAND = "button[data-component-id$='runnamecellrenderer.tsx_46']"  # the +/- beside a parent run's name


@pytest.fixture
def browser():
    """Headless Chromium through Selenium (Debian's chromium and chromium-driver; skipped without them)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no browser: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # no background calls to Google's hosts: this machine's closed network refuses them, many at a time
    quiet = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    headless = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic"]
    for arg in headless + quiet + ["--window-size=1900,1100"]:
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    chrome.implicitly_wait(20)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield chrome
    chrome.quit()  # at once: an open page (Prefect's live run graph) keeps a core busy drawing


def _page(chrome, url: str, shows: str) -> str:
    """Open `url` and wait (up to 60 s) until the page's text contains `shows`; returns the text."""
    chrome.get(url)
    deadline = time.monotonic() + 60
    while shows not in (text := chrome.find_element("tag name", "body").text) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shows in text, f"{url} never showed {shows!r}:\n{text[:2000]}"
    return text


def _expand_runs(chrome) -> list[str]:
    """Open every collapsed parent in the runs table (a plus sign; a minus once open); returns the
    table's run names, top to bottom."""
    for _ in range(10):
        closed = [b for b in chrome.find_elements("css selector", EXPAND) if "V4.5" in b.get_attribute("innerHTML")]
        if not closed:
            break
        closed[0].click()
        time.sleep(1)
    rows = chrome.execute_script(
        "return [...document.querySelectorAll('[role=row][row-index]')].map(r => [Number(r.getAttribute('row-index')),"
        " [...r.querySelectorAll('a[href*=\"/runs/\"]')].map(a => a.innerText).filter(t => t)])"
    )
    by_index = {i: links[0] for i, links in rows if links}
    return [by_index[i] for i in sorted(by_index)]


def test_mlflow_and_prefect_uis_in_a_browser(servers, full_run, browser):
    """What a user sees after a pipeline run, in a real browser: MLflow's runs table holds the stage
    runs under `pipeline` and the per-model evaluation runs under `evaluate`; its chart view and
    Compare runs set base, SFT-only and DPO side by side under the same metric names, with the
    values MLflow's API has; the registered model shows the `champion` alias; Prefect's UI shows the
    flow run completed on the `alignpipe` pool. Screenshots go to .alignpipe/screenshots/."""
    client = mlflow.MlflowClient()
    ui, prefect_ui = servers["env"]["MLFLOW_TRACKING_URI"], servers["env"]["PREFECT_API_URL"].removesuffix("/api")
    parent = parent_of_flow_run("tiny", full_run)
    exp = parent.info.experiment_id
    children = runs_of("tiny", parent.info.run_id)
    evaluate = next(r for r in children if r.info.run_name == "evaluate")
    per_model = sorted(
        runs_of("tiny", evaluate.info.run_id),
        key=lambda r: ["base", "sft", "dpo"].index(r.data.tags["alignpipe.role"]),
    )
    assert [r.info.run_name for r in per_model] == ["eval-base", "eval-sft", "eval-dpo"]
    ids = [parent.info.run_id] + [r.info.run_id for r in children + per_model]
    only_these = urllib.parse.urlencode(
        {"searchFilter": "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"}
    )

    # 1. The runs table: the stages under the pipeline, the scored models under evaluate.
    _page(browser, f"{ui}/#/experiments/{exp}/runs?{only_these}", "pipeline")
    names = _expand_runs(browser)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-runs-table.png"))
    assert names[0] == "pipeline" and {"select", "sft", "dpo", "evaluate", "compare"} <= set(names), names
    at = names.index("evaluate")
    assert sorted(names[at + 1 : at + 4]) == ["eval-base", "eval-dpo", "eval-sft"], names

    # 2. The chart view: one `acc_seen` chart, a bar per scored model (the section of un-prefixed
    # metrics, "Model metrics", comes after the evaluate run's own base/..., sft/... sections).
    _page(browser, f"{ui}/#/experiments/{exp}/runs?{only_these}&compareRunsMode=CHART", "pipeline")
    _expand_runs(browser)
    for close in browser.find_elements("css selector", "button[aria-label='Close']"):  # the assistant panel
        close.click()
    browser.find_element("css selector", "input[placeholder='Search metric charts']").send_keys("acc_seen")
    section = browser.find_element("xpath", "//*[starts-with(normalize-space(text()), 'Model metrics')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
    time.sleep(2)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-chart-view.png"))
    cards = browser.find_elements("css selector", "[data-testid=experiment-view-compare-runs-card]")
    (chart,) = [c.text.splitlines() for c in cards if c.text.splitlines()[:1] == ["acc_seen"]]
    assert chart[-3:] == ["eval-base", "eval-sft", "eval-dpo"], chart
    assert chart[1:4] == [f"{r.data.metrics['acc_seen']:.2f}" for r in per_model], chart

    # 3. Compare runs: one row per metric, one column per model, MLflow's values to 3 decimals.
    compare = {"runs": json.dumps([r.info.run_id for r in per_model]), "experiments": json.dumps([exp])}
    _page(browser, f"{ui}/#/compare-runs?{urllib.parse.urlencode(compare)}", "acc_seen_lo")
    row = browser.find_element("xpath", "//a[normalize-space(text())='acc_seen']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    time.sleep(1)
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-compare-runs.png"))
    names_grid, values_grid = browser.execute_script(
        "return [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')].map(g =>"
        " [...g.children].map(c => [Math.round(c.getBoundingClientRect().top), c.getBoundingClientRect().left,"
        " c.innerText]))"
    )[-2:]
    # the two grids scroll apart by a few pixels: pair the metric names with the value rows by rank
    tops = sorted({top for top, _, _ in values_grid})
    assert len(tops) == len(names_grid), (names_grid, values_grid)
    row_of = {text: tops[i] for i, (_, _, text) in enumerate(sorted(names_grid))}
    for metric in ("acc_seen", "acc_seen_lo", "acc_seen_hi"):
        shown = [float(t) for top, _, t in sorted(values_grid, key=lambda c: c[1]) if top == row_of[metric]]
        assert shown == [round(r.data.metrics[metric], 3) for r in per_model], (metric, shown)

    # 4. The registered model and its champion.
    champion = client.get_model_version_by_alias("tiny", "champion")
    model_page = _page(browser, f"{ui}/#/models/tiny", "@ champion")
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-registered-model.png"))
    assert f"Version {champion.version}" in model_page

    # 5. Prefect: the flow run, completed, from the deployment on the pool.
    run_page = _page(browser, f"{prefect_ui}/runs/flow-run/{full_run}", "Completed")
    browser.save_screenshot(str(SCREENSHOTS / "prefect-flow-run.png"))
    assert "pipeline" in run_page and "full" in run_page and "alignpipe" in run_page
    assert "Can't connect to Server API" not in run_page


def test_three_runs_at_once_through_the_worker(servers):
    """Three deployment runs started at once, as from three shells (two of one experiment, one of
    another): the pool's worker (`alignpipe up --runs 2`, the default) never runs more than two at
    a time, each finishes, and nothing collides."""
    runs = {"a1": "w-same", "a2": "w-same", "b": "w-other"}
    start = [(servers, "sft-only", [*QUICK, f"experiment={e}"]) for e in runs.values()]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(runs, pool.map(lambda args: deployment_run(*args), start)))
    spans = []
    for name, (proc, flow_run_id) in done.items():
        assert proc.returncode == 0 and "Completed" in proc.stdout, (name, proc.stdout[-3000:] + proc.stderr[-3000:])
        with urllib.request.urlopen(f"{servers['env']['PREFECT_API_URL']}/flow_runs/{flow_run_id}") as r:
            run = json.load(r)
        spans.append((datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"])))
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= 2, spans
    check_three_runs(mlflow.MlflowClient(), "w-same", "w-other")


def test_failed_stage_keeps_earlier_runs_and_artifacts(servers, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    proc, flow_run_id = deployment_run(
        servers, "full", FAST + ["experiment=failing", f"preference.model_path={broken}"]
    )
    assert proc.returncode != 0 and "Failed" in proc.stdout
    parent = parent_of_flow_run("failing", flow_run_id)
    assert parent.info.status == "FAILED"
    runs = {r.info.run_name: r for r in runs_of("failing", parent.info.run_id)}
    assert runs["select"].info.status == "FINISHED" and runs["sft"].info.status == "FINISHED"
    assert runs["dpo"].info.status == "FAILED"
    sft_model = Path(json.loads((servers["home"] / "runs" / "failing" / "sft.json").read_text())["model_path"])
    assert (sft_model / "model.safetensors").is_file()
    # fixed and re-run: the finished stages are reused, not trained again
    proc, flow_run_id = deployment_run(servers, "full", FAST + ["experiment=failing"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    tags = parent_of_flow_run("failing", flow_run_id).data.tags
    assert tags["alignpipe.cached.select"] == "true" and tags["alignpipe.cached.sft"] == "true"
    assert tags["alignpipe.cached.preference"] == "false"


def _runs_in(home: Path) -> list:
    """The `tiny` experiment's runs in a home's own sqlite store."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=1000)


def _group(pgid: int) -> list[int]:
    """Live processes of a process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(int(stat.parent.name))
    return found


def test_run_killed_during_sft_resumes_from_its_checkpoint(tmp_path):
    """`alignpipe run` (the same flow, on a temporary Prefect server) killed with SIGKILL part-way
    through SFT, as when a machine is lost; the next run picks up from the last checkpoint."""
    home = tmp_path / "state"
    args = [
        "run",
        "configs/tiny.yaml",
        "--set",
        "sft.max_steps=40",
        "--set",
        "sft.save_steps=10",
        "--set",
        "preference.max_steps=2",
    ]
    env = {**os.environ, "ALIGNPIPE_HOME": str(home)}
    cmd = [str(ROOT / ".venv" / "bin" / "alignpipe"), *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not list(home.glob("runs/tiny/sft-*/checkpoints/checkpoint-10/trainer_state.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before SFT saved a checkpoint"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)  # the run alone: what it started must die with it
        proc.wait()
        deadline = time.monotonic() + 30
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group(proc.pid), "the temporary Prefect server outlived its run"
    finally:
        if _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(home.glob("runs/tiny/sft-*/model"))  # it really died part-way
    again = run_cli(*args, env={"ALIGNPIPE_HOME": str(home)}, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"sft: resuming from .*checkpoint-(10|20|30)", again.stdout + again.stderr)
    (model,) = home.glob("runs/tiny/sft-*/model")
    state = json.loads(
        max(
            model.parent.glob("checkpoints/checkpoint-*/trainer_state.json"),
            key=lambda p: int(p.parent.name.split("-")[1]),
        ).read_text()
    )
    assert state["global_step"] == 40
    # the killed run's MLflow runs (its pipeline parent and its sft) were ended KILLED on the next start
    runs = _runs_in(home)  # (not mlflow.set_tracking_uri: the module's server tests use the global URI)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = sorted(r.info.run_name for r in runs if r.info.status == "KILLED")
    assert killed == ["pipeline", "sft"], killed
    assert all("had died" in r.data.tags["alignpipe.closed_by"] for r in runs if r.info.status == "KILLED")


def test_sigterm_stops_a_run_training_in_process_and_leaves_nothing_running(tmp_path):
    """SIGTERM to `alignpipe run` while SFT trains in a Prefect task thread: the command ends (the
    training thread cannot be interrupted: it exits after a grace period), nothing of it is left."""
    home = tmp_path / "state"
    cmd = [str(ROOT / ".venv" / "bin" / "alignpipe"), "run", "configs/tiny.yaml", "--set", "sft.max_steps=400"]
    env = {**os.environ, "ALIGNPIPE_HOME": str(home)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not list(home.glob("runs/tiny/sft-*/checkpoints")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before SFT started"
            time.sleep(0.5)
        time.sleep(3)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
        deadline = time.monotonic() + 30
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group(proc.pid), "a process of the stopped run is still running"
    finally:
        if _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert [r.info.status for r in _runs_in(home) if r.info.run_name == "pipeline"] == ["FAILED"]


def test_ppo_path_through_the_deployment_records_reward_model_lineage(servers, full_run):
    """`preference.method=ppo`: the flow inserts the reward stage; PPO records the reward model
    and the SFT model as inputs; the comparison holds SFT-only, DPO and PPO side by side."""
    client = mlflow.MlflowClient()
    proc, flow_run_id = deployment_run(servers, "full", FAST + ["preference.method=ppo", "reward.max_steps=4"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    parent = parent_of_flow_run("tiny", flow_run_id)
    runs = {r.info.run_name: client.get_run(r.info.run_id) for r in runs_of("tiny", parent.info.run_id)}
    assert {"reward", "ppo", "evaluate"} <= set(runs) and parent.data.tags["alignpipe.cached.sft"] == "true"
    reward_model = next(
        m
        for m in mlflow.search_logged_models(experiment_ids=[runs["reward"].info.experiment_id], output_format="list")
        if m.source_run_id == runs["reward"].info.run_id
    )
    ppo_inputs = {m.model_id for m in runs["ppo"].inputs.model_inputs}
    assert (
        reward_model.model_id in ppo_inputs
        and runs["ppo"].data.tags["alignpipe.input_model.reward"] == reward_model.model_id
    )
    assert {"objective_kl", "objective_scores", "loss_policy_avg", "loss_value_avg"} <= set(runs["ppo"].data.metrics)
    evaluate = runs["evaluate"]
    assert (
        "ppo/rm_win_rate" in evaluate.data.metrics
        and evaluate.data.tags["alignpipe.input_model.judge"] == reward_model.model_id
    )
    table = Path(client.download_artifacts(runs["compare"].info.run_id, "comparison.txt")).read_text()
    assert table.splitlines()[0].split()[:5] == ["metric", "base", "sft-only", "dpo", "ppo"]
