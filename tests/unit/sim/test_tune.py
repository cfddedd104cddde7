"""``picker tune``: documents in and out, the search's knobs, determinism, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.sim import tune_space as space
from picker import cli
from picker.config import load_config_text
from scoring.registry import DEFAULT_WEIGHTS


def write_trace(path: Path, n: int = 400, seed: int = 3) -> Path:
    """A Mooncake-format trace: 8 conversations' worth of shared 512-token blocks, short answers."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.5, n))
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            g = int(rng.integers(0, 8))
            length = int(rng.integers(1800, 2500))
            # two shared blocks, then the request's own: a finite capacity (a trace cached all through
            # meets the SLO at any rate, and every capacity search then runs to its evaluation budget)
            own = [10_000 + 8 * i + j for j in range(-(-length // 512) - 2)]
            blocks = [g * 100 + j for j in range(2)] + own
            rec = {
                "timestamp": int(t[i] * 1000),
                "input_length": length,
                "output_length": int(rng.integers(20, 120)),
                "hash_ids": blocks,
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def test_the_built_in_profile_reads_back_as_its_weights() -> None:
    docs = space.default_document()
    load_config_text(space.dump(docs))
    s = space.read_setting(docs)
    assert dict(s.weights) == dict(DEFAULT_WEIGHTS)


def test_a_setting_changes_weights_adds_and_removes_scorers_and_stays_valid() -> None:
    docs = space.default_document()
    s = space.read_setting(docs)
    w = dict(s.weights)
    w["queue-scorer"] = 0.0  # off
    w["prefill-queue-scorer"] = 3.14159
    w[space.PREFIX_SCORER] = 2.5  # new
    new = space.apply_setting(
        docs, space.Setting(tuple(w.items()), (("prefill-queue-scorer", "minRangeTokens", 8000.0),))
    )
    text = space.dump(new)
    cfg = load_config_text(text)  # the service's loader accepts it
    assert cfg is not None
    doc = yaml.safe_load(text)
    refs = doc["schedulingProfiles"][0]["plugins"]
    assert {"pluginRef": "prefill-queue-scorer", "weight": 3.14} in refs
    assert all(r["pluginRef"] != "queue-scorer" for r in refs)
    assert all(p["type"] != "queue-scorer" for p in doc["plugins"])
    assert refs[-1] == {"pluginRef": "max-score-picker"}, "the picker stays last"
    assert {"pluginRef": space.PREFIX_SCORER, "weight": 2.5} in refs
    pq = next(p for p in doc["plugins"] if p["type"] == "prefill-queue-scorer")
    assert pq["parameters"] == {"minRangeTokens": 8000}
    assert docs == space.default_document(), "the input documents are not modified"


def test_the_search_only_moves_what_the_simulator_can_judge() -> None:
    docs = space.default_document()
    base = space.read_setting(docs)
    plain = {(k.plugin, k.param) for k in space.knobs(base, docs, prefix=False)}
    assert ("gpu-utilization-scorer", None) not in plain
    assert ("lora-affinity-scorer", None) not in plain
    assert ("prefill-queue-scorer", "minRangeTokens") in plain
    assert (space.PREFIX_SCORER, None) not in plain
    assert (space.PREFIX_SCORER, None) in {(k.plugin, k.param) for k in space.knobs(base, docs, prefix=True)}


def test_candidates_depend_on_the_seed_only() -> None:
    docs = space.default_document()
    base = space.read_setting(docs)
    ks = space.knobs(base, docs, prefix=True)
    a = space.random_candidates(base, ks, 5, np.random.default_rng(1), {})
    b = space.random_candidates(base, ks, 5, np.random.default_rng(1), {})
    c = space.random_candidates(base, ks, 5, np.random.default_rng(2), {})
    assert a == b
    assert a != c
    for s in a:
        # unsimulated scorers keep their weights
        assert s.weight("gpu-utilization-scorer") == base.weight("gpu-utilization-scorer")


def test_no_two_candidates_are_the_same_document() -> None:
    """A parameter of a scorer that is off changes nothing in the written document: the search neither
    moves it (a wasted replay of a configuration it has) nor names it in the report."""
    docs = space.default_document()
    base = space.read_setting(docs)
    ks = space.knobs(base, docs, prefix=True)
    defaults = {(k.plugin, k.param): space.param_default(docs, k) for k in ks if k.param}
    off = dict(base.weights)
    off["prefill-queue-scorer"] = 0.0
    params = (
        ("prefill-queue-scorer", "minRangeTokens", 4220.0),
        (space.PREFIX_SCORER, "queuedRequestTokens", 3230.0),
    )
    best = space.Setting(tuple(off.items()), params).normalized()
    assert "minRangeTokens" not in best.describe()
    assert "queuedRequestTokens 3230" in best.describe()
    candidates = [best, *space.neighbours(best, ks, defaults)]
    candidates += space.random_candidates(base, ks, 40, np.random.default_rng(0), defaults)
    for s in candidates:
        text = space.dump(space.apply_setting(docs, s))
        for name, key, _ in s.params:  # every parameter described is in the document
            plugin = next((p for p in yaml.safe_load(text)["plugins"] if p["type"] == name), {})
            assert key in plugin.get("parameters", {}), (s.describe(), name, key)
    settings = {s: space.dump(space.apply_setting(docs, s)) for s in candidates}
    assert len(set(settings.values())) == len(settings), "two settings, one document"


def run_cli(tmp_path: Path, trace: Path, out: Path, *extra: str) -> dict[str, object]:
    argv = ["tune", "--trace", str(trace), "--out", str(out), "--servers", "4", "--trials", "3"]
    assert cli.main([*argv, "--no-progress", "--json", *extra]) == 0
    return {}


def test_tune_writes_a_loadable_config_deterministically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    out1, out2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    run_cli(tmp_path, trace, out1)
    report = json.loads(capsys.readouterr().out)
    run_cli(tmp_path, trace, out2)
    capsys.readouterr()
    assert out1.read_text() == out2.read_text(), "same trace, flags and seed: same configuration"
    cfg = load_config_text(out1.read_text())
    assert cfg is not None
    assert report["halves"] == [200, 200]
    assert report["candidates"] >= 2
    cur, new = report["current"], report["tuned"]
    assert new["tune_rps"] >= cur["tune_rps"], "a candidate replaces the current one only if it does better"
    assert cur["held_out_rps"] > 0
    assert new["held_out_rps"] > 0
    assert report["changed"] == (new["setting"] != cur["setting"])
    assert report["span_s"] > 0


def test_tune_starts_from_a_given_config_and_keeps_its_other_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_trace(tmp_path / "trace.jsonl", n=300)
    current = tmp_path / "current.yaml"
    current.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n"
        "- {type: queue-scorer}\n"
        "- {type: kv-cache-utilization-scorer}\n"
        "- {name: picker, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "schedulingProfiles:\n"
        "- name: default\n"
        "  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 2}\n"
        "  - {pluginRef: kv-cache-utilization-scorer, weight: 2}\n"
        "  - {pluginRef: picker}\n"
        "---\n"
        "apiVersion: picker.dev/v1alpha1\n"
        "kind: PickerConfig\n"
        "objectives: [{name: batch, priority: -1}]\n"
    )
    out = tmp_path / "tuned.yaml"
    run_cli(tmp_path, trace, out, "--config", str(current))
    capsys.readouterr()
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs[1]["objectives"] == [{"name": "batch", "priority": -1}]
    picker = next(p for p in docs[0]["plugins"] if p.get("name") == "picker")
    assert picker["parameters"] == {"maxNumOfEndpoints": 2}
    load_config_text(out.read_text())


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl", n=100)
    with pytest.raises(ValueError, match="at least 200"):
        cli.main(["tune", "--trace", str(trace), "--out", str(tmp_path / "x.yaml"), "--no-progress"])
    big = write_trace(tmp_path / "big.jsonl", n=300)
    with pytest.raises(SystemExit, match="unknown profile"):
        cli.main(["tune", "--trace", str(big), "--out", str(tmp_path / "x.yaml"), "--profile", "h200"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins: 3\n"
    )
    with pytest.raises(Exception, match="plugins"):
        cli.main(["tune", "--trace", str(big), "--out", str(tmp_path / "x.yaml"), "--config", str(bad)])
    assert not (tmp_path / "x.yaml").exists()


def test_outside_a_source_checkout_tune_says_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> object:
        raise ModuleNotFoundError(f"No module named {name!r}", name="benchmarks")

    # what an installed package (or the image) looks like: no benchmarks/ next to picker/
    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["tune", "--trace", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o.yaml")]) == 2
    assert "checkout of the repository" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("current", "tuned", "warned"), [(0.0, 0.0, True), (4.0, 4.5, False), (0.0, 1.5, False)]
)
def test_the_report_warns_when_no_configuration_has_a_capacity(
    current: float, tuned: float, warned: bool
) -> None:
    from benchmarks.sim.tune import MIN_SPAN_S, report_text

    def side(rps: float) -> dict[str, object]:
        return {"tune_rps": rps, "held_out_rps": rps, "setting": "queue-scorer 1"}

    r = {
        "requests": 2000,
        "servers": 16,
        "profile": "llama3-8b-h100",
        "seed": 0,
        "candidates": 9,
        "replays": 168,
        "wall_s": 1.0,
        "current": side(current),
        "tuned": side(tuned),
        "changed": tuned != current,
        "span_s": MIN_SPAN_S,
        "stopped_early": False,
    }
    text = report_text(r, Path("tuned.yaml"))
    assert ("the SLO is out of reach on this trace" in text) is warned
    assert text.endswith("wrote tuned.yaml")


def test_the_progress_plan_grows_with_a_longer_stage_and_shrinks_with_a_skipped_one() -> None:
    import io

    from benchmarks.sim.tune import Progress

    stream = io.StringIO()
    bar = Progress(stream)
    bar.plan(4)
    for _ in range(6):  # a stage that runs longer than planned
        bar.step()
        assert bar.done <= bar.total
    assert (bar.done, bar.total) == (6, 6)
    bar.plan(5)
    bar.unplan(3)  # a stage that will not run
    assert bar.total == 8
    bar.unplan(100)
    assert bar.total == bar.done == 6, "never below what is done"
    bar.plan(2)
    bar.close()
    assert stream.getvalue().rstrip("\n").split("\r")[-1].startswith(f"tune [{'#' * 30}] 6/6 replays")


@pytest.mark.parametrize("slo_ttft", ["1", "0.0001"])  # the second one no configuration meets
def test_the_progress_bar_counts_every_replay_and_ends_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slo_ttft: str
) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    argv = ["tune", "--trace", str(trace), "--out", str(tmp_path / "o.yaml"), "--servers", "4"]
    assert cli.main([*argv, "--trials", "1", "--requests", "200", "--slo-ttft", slo_ttft, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    frames = [f for f in captured.err.split("\r") if f.startswith("tune [")]
    counts = [tuple(map(int, f.split("] ", 1)[1].split(" ", 1)[0].split("/"))) for f in frames]
    assert all(done <= total for done, total in counts)
    assert [done for done, _ in counts[:-1]] == list(range(1, len(counts)))
    assert counts[-1] == (report["replays"], report["replays"])
    assert frames[-1].startswith(f"tune [{'#' * 30}]")
