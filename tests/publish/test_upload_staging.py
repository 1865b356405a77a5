"""Staging contract tests: publish_episode, finished states, the journal, and kill -9 during publishing."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.publish.ledger import Ledger, ledger_has, repos_for
from droid_pipeline.publish.staging import (
    JournalEntry,
    StagingError,
    append_record,
    finished_state,
    is_finished,
    publish_episode,
    read_journal,
    read_journal_entries,
    read_manifest,
    verify_episode,
)

REL = "LAB/success/2023-08-18/Fri_Aug_18_12:01:10_2023"
EPISODE = "LAB+0000abcd+2023-08-18-12h-01m-10s"


def make_work(root: Path, pipeline: str = "full", seed: int = 0) -> Path:
    rng = random.Random(seed)
    work = root / f"work-{seed}-{time.monotonic_ns()}"
    names = ["tracks.npz", "extrinsics.npz", "quality.json", "recordings/111/intrinsics.json"]
    if pipeline == "full":
        names += ["recordings/111/depth.mkv", "recordings/111/depth_meta.json"]
    for name in names:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(rng.randbytes(rng.randint(10, 2000)))
    return work


def test_publish_writes_manifest_journal_and_moves_the_folder(tmp_path):
    work = make_work(tmp_path)
    manifest = publish_episode(work, tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    dest = tmp_path / "out" / REL
    assert not work.exists() and is_finished(dest) and verify_episode(dest) == []
    assert read_manifest(dest) == manifest and manifest.schema_version == SCHEMA_VERSION
    kinds = {f.path: f.kind for f in manifest.files}
    assert kinds["recordings/111/depth.mkv"] == kinds["recordings/111/depth_meta.json"] == "depth"
    assert kinds["recordings/111/intrinsics.json"] == kinds["tracks.npz"] == "metadata"
    entries, offset = read_journal(tmp_path / "run")
    assert [e["episode_id"] for e in entries] == [EPISODE] and entries[0]["episode_dir"] == str(dest)
    assert read_journal(tmp_path / "run", offset) == ([], offset)


def test_republishing_replaces_the_older_folder(tmp_path):
    publish_episode(make_work(tmp_path, "full", 1), tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    second = publish_episode(make_work(tmp_path, "metadata", 2), tmp_path / "out", REL, EPISODE, "metadata",
                             tmp_path / "run")
    dest = tmp_path / "out" / REL
    assert read_manifest(dest) == second and not (dest / "recordings/111/depth.mkv").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".publish.lock", dest.name]
    assert len(read_journal(tmp_path / "run")[0]) == 2


def test_finished_states(tmp_path):
    dest = tmp_path / "out" / REL
    assert finished_state(dest)[0] == "missing"
    publish_episode(make_work(tmp_path), tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    (dest / "tracks.npz").write_bytes(b"truncated")
    assert finished_state(dest)[0] == "incomplete"
    publish_episode(make_work(tmp_path), tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    data = bytearray((dest / "quality.json").read_bytes())
    data[0] ^= 0xFF
    (dest / "quality.json").write_bytes(bytes(data))
    assert is_finished(dest) and "sha256 differs" in verify_episode(dest)[0]
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION - 1
    (dest / "manifest.json").write_text(json.dumps(manifest))
    assert finished_state(dest)[0] == "stale-schema"
    (dest / "manifest.json").unlink()
    assert finished_state(dest)[0] == "incomplete"


def test_publish_rejects_files_outside_the_contract_and_depth_in_metadata_episodes(tmp_path):
    work = make_work(tmp_path, "metadata")
    (work / "notes.txt").write_text("?")
    with pytest.raises(StagingError, match="notes.txt"):
        publish_episode(work, tmp_path / "out", REL, EPISODE, "metadata", tmp_path / "run")
    with pytest.raises(StagingError, match="depth"):
        publish_episode(make_work(tmp_path, "full"), tmp_path / "out", REL, EPISODE, "metadata", tmp_path / "run")
    with pytest.raises(StagingError, match="relative"):
        publish_episode(make_work(tmp_path), tmp_path / "out", "../x", EPISODE, "full", tmp_path / "run")
    assert not (tmp_path / "out").exists() and read_journal(tmp_path / "run") == ([], 0)


def test_rgb_export_of_the_depth_step_goes_to_the_full_repo_only(tmp_path):
    work = make_work(tmp_path, "full")
    (work / "recordings/111/rgb.mp4").write_bytes(b"\x00" * 64)
    manifest = publish_episode(work, tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    assert {f.path: f.kind for f in manifest.files}["recordings/111/rgb.mp4"] == "depth"
    metadata_work = make_work(tmp_path, "metadata")
    (metadata_work / "recordings/111/rgb.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(StagingError, match="rgb.mp4"):
        publish_episode(metadata_work, tmp_path / "out2", REL, EPISODE, "metadata", tmp_path / "run")


# A journal line as the previous version wrote it (copied from a real run's published.jsonl).
OLD_JOURNAL_LINE = (
    '{"episode_id":"TRI+d5bf9a1d+2023-04-06-14h-16m-18s","relative_path":"TRI/success/2023-04-06/'
    'Thu_Apr__6_14:16:18_2023","pipeline":"metadata","episode_dir":"/tmp/old_records/out/TRI/success/'
    '2023-04-06/Thu_Apr__6_14:16:18_2023","manifest_sha256":"32573ccf36d7e968d12e9d13f0abedd83b77f5056e818a3d0'
    'c0ffcaebe26da35","published":1796116140.8112893}')


def test_journal_entries_are_typed_and_keep_the_previous_layout(tmp_path, caplog):
    publish_episode(make_work(tmp_path), tmp_path / "out", REL, EPISODE, "full", tmp_path / "run")
    journal = tmp_path / "run" / "published.jsonl"
    written = json.loads(journal.read_text())
    (entry,), offset = read_journal_entries(tmp_path / "run")
    assert entry.to_json() == written and list(written) == list(json.loads(OLD_JOURNAL_LINE))
    assert entry.episode_dir == tmp_path / "out" / REL and entry.pipeline == "full"
    assert entry.manifest_sha256 == hashlib.sha256((tmp_path / "out" / REL / "manifest.json").read_bytes()).hexdigest()
    old = JournalEntry.from_json(json.loads(OLD_JOURNAL_LINE))
    assert json.dumps(old.to_json(), separators=(",", ":")) == OLD_JOURNAL_LINE
    # Lines that hold no entry are skipped, each with a warning; the reader goes on after them.
    append_record(journal, {"episode_id": EPISODE, "relative_path": REL})
    append_record(journal, {**written, "pipeline": "rgb"})
    append_record(journal, json.loads(OLD_JOURNAL_LINE))
    with caplog.at_level(logging.WARNING, logger="droid_pipeline.publish.staging"):
        entries, _ = read_journal_entries(tmp_path / "run", offset)
    assert entries == [old]
    assert len([r for r in caplog.records if "no publish entry" in r.getMessage()]) == 2


def test_journal_tolerates_a_torn_line(tmp_path):
    journal = tmp_path / "published.jsonl"
    append_record(journal, {"n": 1})
    with open(journal, "ab") as fh:
        fh.write(b'{"n": 2, "torn')
    records, offset = read_journal(tmp_path)
    assert records == [{"n": 1}]
    append_record(journal, {"n": 3})
    assert read_journal(tmp_path, offset)[0] == [{"n": 3}]


def test_ledger_answers_for_episodes_uploaded_to_every_repo(tmp_path):
    repos = repos_for("full", "hf://datasets/u/meta", "hf://datasets/u/full")
    assert repos == ["hf://datasets/u/meta", "hf://datasets/u/full"]
    assert repos_for("metadata", "hf://datasets/u/meta", "hf://datasets/u/full") == ["hf://datasets/u/meta"]
    ledger = Ledger(tmp_path)
    files = [{"path": f"{REL}/{n}", "size": 1, "sha256": "0" * 64} for n in ("a", "b", "c")]
    ledger.record(episode_id=EPISODE, relative_path=REL, repo=repos[0], manifest_sha256="m1", commit="c1",
                  batch="b1", episode_files=3, files=files)
    ledger.record(episode_id=EPISODE, relative_path=REL, repo=repos[1], manifest_sha256="m1", commit="c2",
                  batch="b2", episode_files=3, files=files[:2])
    assert ledger_has(tmp_path, EPISODE, repos[:1]) and not ledger_has(tmp_path, EPISODE, repos)
    ledger.record(episode_id=EPISODE, relative_path=REL, repo=repos[1], manifest_sha256="m1", commit="c3",
                  batch="b3", episode_files=3, files=files[2:])
    assert ledger_has(tmp_path, EPISODE, repos)


PUBLISH_LOOP = """
import random, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_upload_staging import make_work
from droid_pipeline.publish.staging import publish_episode
root = Path(sys.argv[1])
for i in range(10_000):
    work = make_work(root / "work", random.choice(["full", "metadata"]), i)
    publish_episode(work, root / "out", f"LAB/success/2023-08-18/ep{i % 3}", f"LAB+x+{i % 3}",
                    "full" if (work / "recordings/111/depth.mkv").exists() else "metadata", root / "run")
    print(i, flush=True)
"""


def test_kill_9_while_publishing_leaves_nothing_that_looks_finished_and_is_not(tmp_path):
    rng = random.Random(3)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(tmp_path), str(Path(__file__).parent)],
                                cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline()  # one episode published, however slow the machine: then kill anywhere
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    journal = {e["episode_dir"]: e for e in read_journal(tmp_path / "run")[0]}
    published = [d for d in (tmp_path / "out" / "LAB/success/2023-08-18").iterdir() if not d.name.startswith(".")]
    assert published
    for dest in published:
        state, _ = finished_state(dest)
        assert state == "finished" and verify_episode(dest) == []
        assert str(dest) in journal  # a finished folder is always known to the uploader
