"""The whole of DROID on the Hub, in simulated time: files per repo, largest folder, largest
commit, commits, hours of commit quota and bytes, for each layout (files, shards) and repo.

Per-episode file sizes are measured on a demo run made here: one synthetic episode of --steps
control steps through the intrinsics and tracks steps (the metadata files; their size grows
with T), and one of --depth-frames steps at --depth-size through stereo depth for all three
cameras (depth.mkv bytes per frame, scaled to --steps frames). Every simulated episode has
those sizes (DROID's mean length is about 250 steps: 350 h over 76k successes at 15 Hz).

The real uploader plans the commits (the repo layout's plan: files packed up to max_files_per_commit,
or one shard per commit by shard_max_episodes / shard_max_bytes), batch by batch every
upload_interval_s, with its rolling-hour budget (RepoState.budget_wait, max_commits_per_hour)
on a simulated clock. Each planned commit goes to the loopback Hub server
(tests/support/hub_server.py) as the Hub's NDJSON commit call, with empty file contents (the
sizes come from the plan); the server counts files per repo, entries per folder and files per
commit against the Hub's limits, and answers 429 past 128 commits per hour on the same clock,
which the simulation waits out (Retry-After). The episode index is written for real (every row,
with the real writer) to measure its size; the card likewise.

    .venv/bin/python bench/bench_hub_scale.py --episodes 92233 [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))

from hub_server import HubServer, Limits, Repo  # noqa: E402

from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.formats.depth_codec import DepthReader, DepthWriter  # noqa: E402
from droid_pipeline.publish import index as episode_index  # noqa: E402
from droid_pipeline.publish.card import render_card  # noqa: E402
from droid_pipeline.publish.records import RepoState, UploadFile, Work  # noqa: E402
from droid_pipeline.publish.shards import ShardMember, index_path, shard_path, tar_bytes  # noqa: E402
from droid_pipeline.publish.staging import JournalEntry  # noqa: E402
from droid_pipeline.publish.uploader import Uploader  # noqa: E402
from droid_pipeline.raw.discovery import build_index  # noqa: E402
from droid_pipeline.steps.depth import downscale_depth, extract_depth  # noqa: E402
from droid_pipeline.steps.intrinsics import extract_intrinsics  # noqa: E402
from droid_pipeline.steps.tracks import generate_tracks  # noqa: E402
from droid_pipeline.synthetic.generator import generate_dataset  # noqa: E402

HUB = Limits(max_files_per_repo=100_000, max_entries_per_folder=10_000, max_files_per_commit=100,
             commits_per_hour=128, reject=False)
DEPTH_FACTORS = (1, 2, 4)
KINDS = ("metadata", "full")


def measure(steps: int, depth_frames: int, depth_size: tuple[int, int], scratch: Path) -> dict[str, Any]:
    """Per-file sizes of a demo run (see module docstring), and depth bytes per depth_size option."""
    started = time.perf_counter()
    info = generate_dataset(scratch / "tracks", episodes=1, frames=steps, size=(320, 180))
    config = load_config([info.config_path])
    episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
    work = scratch / "work"
    extract_intrinsics(config, episode, work)
    generate_tracks(config, episode, work)
    sizes = {p.relative_to(work).as_posix(): p.stat().st_size for p in work.rglob("*") if p.is_file()}
    depth_info = generate_dataset(scratch / "depth", episodes=1, frames=depth_frames, size=depth_size)
    depth_config = load_config([depth_info.config_path])
    depth_episode = build_index(depth_config.droid_root, depth_config.index_path).get(
        depth_info.episodes[0].episode_id)
    depth_work = scratch / "depth_work"
    extract_intrinsics(depth_config, depth_episode, depth_work)
    result = extract_depth(depth_config, depth_episode, depth_work, backend="stereo")
    per_factor = dict.fromkeys(DEPTH_FACTORS, 0)
    meta_bytes = 0
    for camera in result.cameras.values():
        frames = DepthReader(camera.depth_path).read_all()
        meta_bytes += camera.meta_path.stat().st_size
        for factor in DEPTH_FACTORS:
            out = scratch / f"re-{factor}-{camera.serial}.mkv"
            with DepthWriter(out, frames.shape[2] // factor, frames.shape[1] // factor, 15.0,
                             depth_config.ffv1) as writer:
                for frame in frames:
                    writer.write(downscale_depth(frame, factor))
            per_factor[factor] += out.stat().st_size
    cameras = len(result.cameras)
    return {"metadata_files": sizes, "steps": steps, "cameras": cameras, "depth_frames": depth_frames,
            "depth_size": depth_size, "depth_bytes_per_step": {f: b / depth_frames for f, b in per_factor.items()},
            "depth_meta_bytes": meta_bytes / cameras, "seconds": time.perf_counter() - started}


def episode_files(measured: dict[str, Any], kind: str, depth_factor: int = 1) -> list[tuple[str, int]]:
    """(path in the episode folder, size) of one simulated episode in a repo of ``kind``."""
    files = sorted(measured["metadata_files"].items())
    manifest = 190 * (len(files) + 2 * measured["cameras"]) + 300  # manifest.json: one entry per file
    files.append(("manifest.json", manifest))
    if kind == "full":
        per_camera = measured["depth_bytes_per_step"][depth_factor] * measured["steps"] / measured["cameras"]
        serials = sorted({p.split("/")[1] for p, _ in files if p.startswith("recordings/")})
        for serial in serials:
            files += [(f"recordings/{serial}/depth.mkv", int(per_camera)),
                      (f"recordings/{serial}/depth_meta.json", int(measured["depth_meta_bytes"]))]
    return files


LABS = ("AUTOLab", "CLVR", "GuptaLab", "ILIAD", "IPRL", "IRIS", "PennPAL", "RAD", "RAIL", "REAL", "RPL", "TRI",
        "WEIRD")


def droid_like(number: int) -> tuple[str, str]:
    """Episode id and relative path of episode ``number``, laid out as DROID's: 13 labs, 83% successes,
    a year of dates, folders named by time.asctime() (``:`` included)."""
    lab = LABS[number % len(LABS)]
    day = number // len(LABS) % 365
    date = time.strftime("%Y-%m-%d", time.gmtime(1672531200 + 86400 * day))
    seconds = number // (len(LABS) * 365)
    stamp = time.gmtime(1672531200 + 86400 * day + 36000 + 61 * seconds)
    outcome = "failure" if number % 6 == 5 else "success"
    episode_id = f"{lab}+{number:08x}+{date}-{stamp.tm_hour}h-{stamp.tm_min}m-{stamp.tm_sec}s"
    return episode_id, f"{lab}/{outcome}/{date}/{time.asctime(stamp).replace(' ', '_')}"


class Committer:
    """NDJSON commits to the loopback server's commit endpoint, as huggingface_hub sends them."""

    def __init__(self, hub: HubServer, repo_id: str):
        host, port = hub.endpoint.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port))
        self.repo_id = repo_id
        self.empty = base64.b64encode(b"").decode()

    def commit(self, paths: list[str]) -> tuple[int, float]:
        """(HTTP status, Retry-After seconds) of a commit adding ``paths``."""
        lines = [{"key": "header", "value": {"summary": f"add {len(paths)} file(s)", "description": ""}}]
        lines += [{"key": "file", "value": {"path": p, "content": self.empty, "encoding": "base64"}} for p in paths]
        body = "\n".join(json.dumps(line) for line in lines).encode()
        self.connection.request("POST", f"/api/datasets/{self.repo_id}/commit/main", body=body,
                                headers={"Content-Type": "application/x-ndjson"})
        response = self.connection.getresponse()
        response.read()
        return response.status, float(response.getheader("Retry-After") or 0)


def simulate(layout: str, kind: str, episodes: int, files: list[tuple[str, int]], config: Any,
             scratch: Path, index_bytes: int, card_bytes: int) -> dict[str, Any]:
    """Upload ``episodes`` identical episodes in simulated time; the figures of the issue's table."""
    now = [0.0]
    url = f"file://{scratch / f'{layout}-{kind}'}"
    keys = {"metadata_repo": url if kind == "metadata" else None, "full_repo": url if kind == "full" else None}
    uploader = Uploader(dataclasses.replace(config, hub_layout=layout, **keys), scratch / f"run-{layout}-{kind}",
                        token=None)
    work = []
    for number in range(episodes):
        episode_id, rel = droid_like(number)
        entry = JournalEntry(episode_id, rel, "full" if kind == "full" else "metadata", Path("/nonexistent"), "", 0.0)
        work.append(Work(entry, [UploadFile(f"{rel}/{p}", Path("/nonexistent"), size, "") for p, size in files],
                          len(files)))
    state = RepoState()
    repo_id = f"bench/{layout}-{kind}"
    with HubServer(scratch / f"hub-{layout}-{kind}", limits=HUB, clock=lambda: now[0]) as hub:
        hub.repos[("dataset", repo_id)] = Repo("dataset", repo_id, private=True)
        committer = Committer(hub, repo_id)
        shard_number = rate_limited = commits = 0
        data_bytes = uploaded = indexed = 0
        pending = work
        while pending:
            chunks = uploader.repos[url].layout.plan(pending)  # one batch: the real uploader's plan of what is left
            done = 0
            for chunk in chunks:
                if state.budget_wait(config.max_commits_per_hour, now[0]) > 0:
                    break  # carried over to a later batch
                if layout == "files":
                    paths = [f.path_in_repo for w in chunk for f in w.files]
                    size = sum(f.size for w in chunk for f in w.files)
                else:
                    paths = [shard_path(kind, shard_number), "README.md", index_path(kind)]
                    size = tar_bytes([sum(512 + -(-f.size // 512) * 512 for f in w.files) for w in chunk])
                    shard_number += 1
                while True:
                    status, retry_after = committer.commit(paths)
                    if status != 429:
                        break
                    rate_limited += 1
                    now[0] += retry_after
                assert status == 200, status
                state.commit_times.append(now[0])
                commits += 1
                data_bytes += size
                done += len(chunk)
                indexed += len(chunk)
                uploaded += size + (index_bytes * indexed // episodes + card_bytes if layout == "shards" else 0)
            pending = pending[done:]
            if pending:  # later batches carry over until the budget allows a commit: skip to the first that can
                wait = state.budget_wait(config.max_commits_per_hour, now[0])
                now[0] += max(1, -(-wait // config.upload_interval_s)) * config.upload_interval_s
        repo = hub.repo(repo_id)
        total = data_bytes + (index_bytes + card_bytes if layout == "shards" else 0)
        return {"layout": layout, "repo": kind, "files": len(repo.files), "max_folder_entries": repo.max_folder_entries,
                "max_files_per_commit": repo.max_commit_files, "commits": commits,
                "quota_hours": round(max(c.time for c in repo.commits) / 3600.0, 2), "bytes": total,
                "_uploaded": uploaded, "_rate_limited": rate_limited}


def index_size(episodes: int, files: list[tuple[str, int]], kind: str, scratch: Path) -> tuple[int, int]:
    """Bytes of the real index and card for ``episodes`` rows (random checksums, as real ones are)."""
    rng = np.random.default_rng(0)
    info = episode_index.EpisodeInfo("LAB", "success", "2023-08-18", {"wrist": "11111111", "ext1": "22222222",
                                                                      "ext2": "33333333"},
                                     {"num_frames": 250, "num_normalized_steps": 1500, "fps": 15.0,
                                      "camera_serials": ["11111111", "22222222", "33333333"],
                                      "cameras_with_2d_tracks": ["wrist", "ext1", "ext2"],
                                      "current_task": "put the marker in the cup",
                                      **{f"language_instruction_{i}": "put the marker in the cup" for i in (1, 2, 3)},
                                      "file_path": "gs://xembodiment_data/r2d2/r2d2-data-full/LAB/success/2023-08-18/"
                                                   "Fri_Aug_18_12:00:00_2023/trajectory.h5",
                                      "recording_folderpath": "gs://xembodiment_data/r2d2/r2d2-data-full/LAB/success/"
                                                              "2023-08-18/Fri_Aug_18_12:00:00_2023/recordings/MP4",
                                      "kept_fraction": 0.74, "keep_computed": True,
                                      "visible_fraction_wrist": 0.4, "visible_fraction_ext1": 0.8,
                                      "visible_fraction_ext2": 0.7, "path_length_mm": 1500.0,
                                      "wrist_pose_deviation_mm": 0.8, "wrist_pose_within_tolerance": True,
                                      "warnings": [], "calibration_sources": ["cam2base:cam2base_extrinsics.json",
                                                                              "h5", "intrinsics:published"]})
    rows = []
    for number in range(episodes):
        offset = 0
        members = []
        for path, size in files:
            members.append(ShardMember(f"k{number}.{path}", path, offset, size, rng.bytes(32).hex()))
            offset += size + 512
        rows.append(episode_index.index_row(
            episode_id=f"LAB+{number:08x}+2023-08-18-12h-00m-00s", relative_path=f"LAB/success/2023-08-18/{number}",
            pipeline=kind, schema_version=2, manifest_sha256=rng.bytes(32).hex(), published=1.7e9 + number,
            info=info, shard=shard_path(kind, number // 200), members=members))
    table = episode_index.merge(episode_index.empty_table(), rows)
    path = scratch / f"index-{kind}.parquet"
    episode_index.write_index(path, table, next_shard=episodes // 200 + 1, kind=kind, types=None)
    card = render_card(kind, f"user/droid-{kind}", table, shards=episodes // 200 + 1)
    return path.stat().st_size, len(card.encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=92233)
    parser.add_argument("--steps", type=int, default=250, help="control steps per episode (DROID's mean: ~250)")
    parser.add_argument("--depth-frames", type=int, default=8, help="depth frames measured per camera")
    parser.add_argument("--depth-size", default="1280x720", help="camera size of the depth measurement")
    parser.add_argument("--max-commits-per-hour", type=int,
                        help="the uploader's budget (default: the config's, 100; above 128 the server answers 429)")
    parser.add_argument("--json", type=Path, help="write the table's rows here")
    args = parser.parse_args()
    depth_size = tuple(int(v) for v in args.depth_size.split("x"))
    config = load_config()
    if args.max_commits_per_hour:
        config = dataclasses.replace(config, max_commits_per_hour=args.max_commits_per_hour)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        measured = measure(args.steps, args.depth_frames, depth_size, scratch)  # type: ignore[arg-type]
        print(f"demo run: {args.steps}-step episode (tracks), {args.depth_frames} depth frames at {args.depth_size} "
              f"x {measured['cameras']} cameras (stereo backend), measured in {measured['seconds']:.0f} s")
        rows, per_episode = [], {}
        for kind in KINDS:
            files = episode_files(measured, kind)
            per_episode[kind] = sum(size for _, size in files)
            index_bytes, card_bytes = index_size(args.episodes, files, kind, scratch)
            print(f"{kind} repo: {len(files)} files per episode, {per_episode[kind] / 1e6:.2f} MB per episode; "
                  f"index of {args.episodes} rows {index_bytes / 1e6:.1f} MB, card {card_bytes / 1e3:.1f} kB")
            for layout in ("files", "shards"):
                started = time.perf_counter()
                row = simulate(layout, kind, args.episodes, files, config, scratch, index_bytes, card_bytes)
                row["_seconds"] = time.perf_counter() - started
                rows.append(row)
        print()
        header = ("layout", "repo", "files", "largest folder", "largest commit", "commits", "quota h", "bytes",
                  "files<100k", "folder<10k", "commit<=100", "429s")
        table = [header]
        for r in rows:
            table.append((r["layout"], r["repo"], f"{r['files']:,}", f"{r['max_folder_entries']:,}",
                          f"{r['max_files_per_commit']:,}", f"{r['commits']:,}", f"{r['quota_hours']:,.1f}",
                          f"{r['bytes'] / 1e12:.2f} TB", _ok(r["files"] < HUB.max_files_per_repo),
                          _ok(r["max_folder_entries"] < HUB.max_entries_per_folder),
                          _ok(r["max_files_per_commit"] <= HUB.max_files_per_commit), str(r["_rate_limited"])))
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        for r in rows:
            if r["layout"] == "shards":
                print(f"shards {r['repo']}: uploaded {r['_uploaded'] / 1e12:.2f} TB with every commit's index and "
                      f"card ({r['_uploaded'] / r['bytes'] - 1:.1%} over the data); simulated in {r['_seconds']:.0f} s")
        print("\nbytes per episode and for the whole release, full repo, by depth_size "
              f"(depth measured at {args.depth_size}):")
        native = measured["depth_bytes_per_step"][1]
        for factor in DEPTH_FACTORS:
            size = sum(s for _, s in episode_files(measured, "full", factor))
            label = "native" if factor == 1 else f"{depth_size[0] // factor}x{depth_size[1] // factor}"
            print(f"  {label:>10s}: {size / 1e6:8.1f} MB/episode, {size * args.episodes / 1e12:6.2f} TB, "
                  f"depth {measured['depth_bytes_per_step'][factor] / native:.2f} of native")
        print(f"  metadata repo: {per_episode['metadata'] / 1e6:.2f} MB/episode, "
              f"{per_episode['metadata'] * args.episodes / 1e9:.0f} GB")
        if args.json:
            args.json.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                                            indent=2) + "\n")
            print(f"json: {args.json}")
    return 0


def _ok(holds: bool) -> str:
    return "yes" if holds else "NO"


if __name__ == "__main__":
    sys.exit(main())
