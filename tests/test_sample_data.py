"""The sample traffic shipped in the package (flows/sample_data/): what it holds, where it came from, and that
the demo runs from a copy of the repository with nothing beside it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from flows.cli import main
from simulators.traffic import (
    NOT_SHIPPED,
    TrafficData,
    TrafficDataError,
    content_pool,
    generate,
    read_trace,
    shared_data,
    shared_data_dir,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "flows" / "sample_data"


def provenance() -> list[dict[str, str]]:
    with (SAMPLE / "PROVENANCE.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_shipped_file_is_listed_with_its_checksums_and_a_permissive_licence():
    listed = provenance()
    assert {p.name for p in SAMPLE.iterdir()} == {r["file"] for r in listed} | {"PROVENANCE.tsv", "NOTICE.md"}
    for r in listed:
        packed = (SAMPLE / r["file"]).read_bytes()
        content = gzip.decompress(packed)
        assert hashlib.sha256(packed).hexdigest() == r["sha256"], r["file"]
        assert hashlib.sha256(content).hexdigest() == r["content_sha256"], r["file"]
        header = 1 if r["file"].endswith(".csv.gz") else 0
        assert len(content.splitlines()) - header == int(r["rows"]), r["file"]
        assert r["license"].split()[0] in {"CC-BY-4.0", "MIT", "Apache-2.0"}, r["file"]
        assert r["file"] in (SAMPLE / "NOTICE.md").read_text(), f"{r['file']} is not attributed"
    assert not any("xstest" in r["file"] for r in listed)  # model providers' outputs stay out
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 700_000


def test_a_pip_install_carries_the_sample():
    """setuptools ships the folder as a package, and its package-data globs take every file in it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "flows.sample_data" in config["packages"]
    taken = {p for pattern in config["package-data"]["flows.sample_data"] for p in SAMPLE.glob(pattern)}
    assert set(SAMPLE.iterdir()) == taken


@pytest.mark.skipif(
    not (shared_data_dir() / "PROVENANCE.tsv").is_file(), reason="the full sets (../shared/data) are not here"
)
def test_the_script_rebuilds_the_sample_byte_for_byte_from_the_full_sets():
    script = [sys.executable, str(REPO / "scripts" / "sample_data.py"), "--check"]
    done = subprocess.run(
        [*script, "--shared", str(shared_data_dir())], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    # the traces ship whole: the sample's events keep the full sets' arrivals, token counts and routes
    for trace in ("conv", "code"):
        assert read_trace(trace) == read_trace(trace, shared_data())


def test_the_sample_traffic_mixes_every_kind_it_ships():
    kinds = Counter(c.kind for c in content_pool())
    assert kinds == {"halueval": 2000, "pii": 1500, "harmful": 200, "jailbreak": 14}
    events = [json.loads(v) for k, v, _ in generate() if not k.startswith(b"bad-")]
    assert len(events) == 28_185
    seen = Counter(e["metadata"]["content_kind"] for e in events)
    assert set(seen) == set(kinds)
    assert [k for k, v, _ in generate(limit=5)] == [k for k, v, _ in generate(limit=5)]


def test_a_missing_data_file_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("judgeflow: ") and "Traceback" not in err
    assert f"{tmp_path / 'nowhere'}/labeled/xstest_completions_human_labeled.jsonl.gz not found" in err
    broken = TrafficData(tmp_path, packaged=True)  # an install that lost its data files
    with pytest.raises(TrafficDataError, match="missing from the judgeflow package: reinstall it"):
        read_trace("conv", broken)
    assert "labeled/xstest_completions_human_labeled.jsonl.gz" in NOT_SHIPPED


# Run in the copy: record every file the demo opens (sys.addaudithook sees each open()), then print them.
_DEMO_IN_COPY = """
import json, sys
opened = []
sys.addaudithook(lambda e, args: opened.append(args[0]) if e == "open" and isinstance(args[0], str) else None)
import flows
from flows.cli import main
code = main(["demo", "--limit", "3000", "--judge-latency-ms", "5"])
print("RESULT " + json.dumps({"code": code, "flows": flows.__file__, "opened": opened}))
"""


def _copy_of_the_repository(dest: Path) -> Path:
    """The working tree's files as git sees them (tracked or new, not ignored): what a clone would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_the_demo_runs_from_a_copy_of_the_repository_with_nothing_beside_it(tmp_path):
    clone = _copy_of_the_repository(tmp_path / "judgeflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "JUDGEFLOW_"))}
    env |= {"PYTHONPATH": str(clone), "JUDGEFLOW_SHARED_DATA": str(tmp_path / "nowhere")}
    done = subprocess.run(
        [sys.executable, "-c", _DEMO_IN_COPY],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    result_line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert result_line, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(result_line[0].removeprefix("RESULT "))
    assert result["code"] == 0
    assert Path(result["flows"]).is_relative_to(clone)  # the copy's code, not the repository's
    assert "produced 3003 events" in done.stdout  # 3,000 and three malformed ones
    assert "events and LLM cost per tenant" in done.stdout
    opened = [Path(os.path.abspath(os.path.join(clone, p))) for p in result["opened"]]
    assert any(p.is_relative_to(clone / "flows" / "sample_data") for p in opened)
    venv = Path(sys.prefix)
    in_repository = [p for p in opened if p.is_relative_to(REPO) and not p.is_relative_to(venv)]
    assert in_repository == []
    assert not any(p.is_relative_to(shared_data_dir()) for p in opened)
