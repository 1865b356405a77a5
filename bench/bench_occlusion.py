"""Benchmark the occlusion labels on a full-size synthetic episode: T=300 steps, N=480 points,
3 cameras (2 fixed exterior, 1 wrist), against the rest of the tracks step on the same episode.

Times, on one core (BLAS pinned to one thread before NumPy loads), the robot posing, the
self-occlusion test per camera (back faces and the ray test) and the scene test from one
camera's depth, and the tracks step itself; prints the median and spread of several runs and
the labels' fractions. ``--before DIR`` (another checkout) also times that checkout's segment
query (``geometry/segments.py``, loaded beside this one's) on the same calls, in turn with this
one's: CPU seconds of the three cameras' queries, medians, and how many labels differ; and the
two ``MeshSet`` builds of the robot's meshes, in turn: CPU medians, and which arrays differ.

    .venv/bin/python bench/bench_occlusion.py [--frames 300] [--repeats 7] [--keep DIR] [--before DIR]
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.geometry import segments  # noqa: E402
from droid_pipeline.geometry.poses import pose6_to_matrix, transform_points  # noqa: E402
from droid_pipeline.geometry.projection import points_in_camera, project, visible  # noqa: E402
from droid_pipeline.raw.discovery import build_index  # noqa: E402
from droid_pipeline.robot.gripper import (  # noqa: E402
    LEFT_FINGER_LINK,
    RIGHT_FINGER_LINK,
    GripperModel,
)
from droid_pipeline.robot.occlusion import (  # noqa: E402
    LABEL_NAMES,
    RobotOcclusion,
    back_facing,
    combine_labels,
    scene_occlusion,
)
from droid_pipeline.steps.intrinsics import extract_intrinsics  # noqa: E402
from droid_pipeline.steps.tracks import generate_tracks  # noqa: E402
from droid_pipeline.synthetic.generator import generate_dataset  # noqa: E402


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def describe(seconds: list[float]) -> str:
    return (f"median {1000 * statistics.median(seconds):7.1f} ms  (min {1000 * min(seconds):7.1f}, "
            f"max {1000 * max(seconds):7.1f}, {len(seconds)} runs)")


def compare_queries(before: Path, occlusion: RobotOcclusion, pose, points, normals, cameras: dict, margin_m: float,
                    repeats: int) -> None:
    """The segment query of ``before`` and of this checkout on the same calls (the points each
    camera tests, as ``RobotOcclusion.blocked`` groups and excludes them), in turn: CPU medians;
    then the two ``MeshSet`` builds, in turn."""
    spec = importlib.util.spec_from_file_location("before_segments", before / "droid_pipeline/geometry/segments.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no droid_pipeline/geometry/segments.py in {before}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    meshes = [occlusion.link_triangles[link] for link in occlusion.links]
    versions = {"before": (module.MeshSet(meshes), module.blocked_segments),
                "now": (segments.MeshSet(meshes), segments.blocked_segments)}
    half = points.shape[1] // 2
    groups = np.repeat([0, 1], [half, points.shape[1] - half])
    excluded = np.zeros((2, len(occlusion.links)), dtype=bool)
    excluded[0, occlusion.links.index(LEFT_FINGER_LINK)] = excluded[1, occlusion.links.index(RIGHT_FINGER_LINK)] = True
    tested = {serial: camera["seen"] & ~back_facing(points, normals, camera["poses"])
              for serial, camera in cameras.items()}

    def query(version: str) -> list[np.ndarray]:
        mesh_set, function = versions[version]
        return [function(mesh_set, pose.poses, camera["poses"], points, margin_m=margin_m, tested=tested[serial],
                         groups=groups, excluded=excluded) for serial, camera in cameras.items()]

    cpu: dict[str, list[float]] = {version: [] for version in versions}
    for _ in range(repeats + 1):
        for version in versions:
            start = time.process_time()
            query(version)
            cpu[version].append(time.process_time() - start)
    differ = sum(int((a != b).sum()) for a, b in zip(query("before"), query("now")))
    before_s, now_s = cpu["before"][1:], cpu["now"][1:]  # the first round warms up
    print(f"segment query, 3 cameras, in turn, CPU medians of {repeats}: before {statistics.median(before_s):.3f} s, "
          f"now {statistics.median(now_s):.3f} s; now / before pair by pair "
          f"{statistics.median(n / b for n, b in zip(now_s, before_s)):.2f}; labels that differ: {differ}")
    builds: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(repeats + 1):
        for version, build in (("before", module.MeshSet), ("now", segments.MeshSet)):
            start = time.process_time()
            build(meshes)
            builds[version].append(time.process_time() - start)
    old, new = versions["before"][0], versions["now"][0]
    unequal = [name for name, value in vars(old).items()
               if not np.array_equal(np.asarray(value), np.asarray(getattr(new, name, None)))]
    before_s, now_s = builds["before"][1:], builds["now"][1:]
    print(f"MeshSet build, {len(meshes)} meshes, in turn, CPU medians of {repeats}: before "
          f"{statistics.median(before_s):.4f} s, now {statistics.median(now_s):.4f} s; now / before pair by pair "
          f"{statistics.median(n / b for n, b in zip(now_s, before_s)):.2f}; arrays of the before build that differ "
          f"in the new one: {', '.join(unequal) or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="generate the episode here and keep it")
    parser.add_argument("--before", type=Path, help="another checkout whose segment query runs in turn with this one's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        start = time.perf_counter()
        info = generate_dataset(root, episodes=1, frames=args.frames, size=(320, 180))
        print(f"setup: synthetic episode of {args.frames} steps rendered in {time.perf_counter() - start:.1f} s")
        config = load_config([info.config_path])
        episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
        output_dir = config.output_root / episode.relative_path
        extract_intrinsics(config, episode, output_dir)
        generate_tracks(config, episode, output_dir)  # warm: models built once per process

        with h5py.File(info.episode_dir(info.episodes[0]) / "trajectory.h5", "r") as h5:
            joints = h5["observation/robot_state/joint_positions"][()]
            flange = pose6_to_matrix(h5["observation/robot_state/cartesian_position"][()])
            opening = h5["observation/robot_state/gripper_position"][()]
        truth = json.loads((info.ground_truth_path(info.episodes[0]) / "cameras.json").read_text())
        gripper, occlusion = GripperModel.load(), RobotOcclusion.load()
        num_points = config.num_track_points
        points = transform_points(flange, gripper.contact_points(opening, num_points))
        normals = gripper.contact_normals(opening, num_points) @ np.swapaxes(flange[:, :3, :3], -1, -2)
        margin_m = config.occlusion.surface_margin_mm / 1000.0
        cameras = {}
        for serial, record in truth.items():
            poses = (flange @ np.array(record["T_flange_cam"]) if record["role"] == "wrist"
                     else np.array(record["T_base_cam"]))
            local = points_in_camera(points, poses)
            pixels = project(local, np.array(record["K"]))
            cameras[serial] = {"role": record["role"], "poses": poses, "local": local, "pixels": pixels,
                               "seen": visible(pixels, local[..., 2], record["width"], record["height"],
                                               config.min_depth.for_role(record["role"])),
                               "depth": info.ground_truth_path(info.episodes[0]) / record["depth_file"]}
        pose = occlusion.pose(joints, flange, opening)

        def robot_labels() -> dict[str, np.ndarray]:
            return {serial: occlusion.robot_occlusion(pose, points, normals, camera["poses"], margin_m=margin_m,
                                                      in_view=camera["seen"]) for serial, camera in cameras.items()}

        serial, first = next(iter(cameras.items()))
        depth = np.load(first["depth"], mmap_mode="r")

        def scene_labels() -> np.ndarray:
            return scene_occlusion(iter(depth), first["pixels"], first["local"][..., 2], first["seen"],
                                   tolerance_mm=config.occlusion.scene_tolerance_mm,
                                   tolerance_per_m2=config.occlusion.scene_tolerance_per_m2)

        without = load_config([info.config_path], ["occlusion.enabled=false"])   # the step's own labels off
        steps = timed(lambda: generate_tracks(without, episode, output_dir), args.repeats)
        posing = timed(lambda: occlusion.pose(joints, flange, opening), args.repeats)
        per_camera = {s: timed(lambda c=c: occlusion.robot_occlusion(pose, points, normals, c["poses"],
                                                                     margin_m=margin_m, in_view=c["seen"]),
                               args.repeats) for s, c in cameras.items()}
        everything = timed(lambda: (occlusion.pose(joints, flange, opening), robot_labels()), args.repeats)
        scene = timed(scene_labels, args.repeats)

        print(f"episode: T={len(points)} N={num_points} cameras={len(cameras)}; one core "
              f"(OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']})")
        print(f"tracks step (without occlusion), whole: {describe(steps)}")
        print(f"robot pose (17 links, T steps):         {describe(posing)}")
        for s, seconds in per_camera.items():
            print(f"robot occlusion, {cameras[s]['role']:5s} camera:        {describe(seconds)}")
        print(f"pose + robot occlusion, all cameras:    {describe(everything)}")
        print(f"scene occlusion, {cameras[serial]['role']} depth frames:    {describe(scene)} "
              "(frames from the ground-truth .npy; decoding depth.mkv not included)")
        print(f"ratio robot occlusion / tracks step:    "
              f"{statistics.median(everything) / statistics.median(steps):.2f}")
        if args.before:
            compare_queries(args.before.resolve(), occlusion, pose, points, normals, cameras, margin_m,
                            3 * args.repeats)
        robot = robot_labels()
        for s, camera in cameras.items():
            labels = combine_labels(camera["seen"], robot[s], scene_labels() if s == serial else None)
            fractions = ", ".join(f"{LABEL_NAMES[value]} {np.mean(labels == value):.3f}" for value in LABEL_NAMES)
            print(f"labels {camera['role']:5s}: {fractions}" + ("" if s == serial else " (no depth: unknown)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
