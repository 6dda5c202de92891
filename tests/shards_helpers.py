"""Fixture data laid out like each official source, made of real encoded videos (PyAV) and images."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def write_video(
    path: Path, num_frames: int = 24, width: int = 32, height: int = 24, fps: int = 30, seed: int = 0
) -> Path:
    """A real H.264 MP4 (or VP9 WebM for .webm) of moving noise blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, index, axis=1), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return path


def make_kinetics(root: Path) -> dict:
    """K700-style CSV (with is_cc) + class folders + one flat file; a missing, a corrupt and a label-less row."""
    videos = root / "videos"
    rows = [
        ("jumping", "abc-DEF_123", 10, 20),
        ("archery", "zz_top", 0, 10),
        ("jumping", "flat1", 5, 15),
        ("archery", "gone", 1, 11),
        ("archery", "broken", 3, 13),
        ("", "unlabelled", 7, 17),
    ]
    for i, (label, ytid, start, end) in enumerate(rows):
        name = f"{ytid}_{start:06d}_{end:06d}.mp4"
        if ytid == "gone":
            continue
        folder = videos if ytid in ("flat1", "unlabelled") else videos / label
        if ytid == "broken":
            write_corrupt(folder / name)
        else:
            write_video(folder / name, num_frames=20 + i, seed=i)
    csv = root / "train.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        + "".join(f"{label},{ytid},{start},{end},train,0\n" for label, ytid, start, end in rows)
    )
    return {"csv": csv, "videos": videos}


def make_ssv2(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    templates = ["Holding something", "Pushing something from left to right", "Pushing something from right to left"]
    (root / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    entries = [
        {"id": "101", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
        {
            "id": "102",
            "label": "pushing pen from left to right",
            "template": "Pushing [something] from left to right",
            "placeholders": ["pen"],
        },
        {"id": "103", "label": "x", "template": "Pushing [something] from right to left", "placeholders": ["x"]},
        {"id": "104", "label": "y", "template": "Holding [something]", "placeholders": ["y"]},
    ]
    (root / "train.json").write_text(json.dumps(entries))
    for i, entry in enumerate(entries[:3]):
        write_video(root / "videos" / f"{entry['id']}.webm", num_frames=12 + i, fps=12, seed=i)
    return {"labels": root / "labels.json", "annotations": root / "train.json", "videos": root / "videos"}


AVA_60_IDS = [
    i for i in range(1, 81) if i not in {2, 16, 18, 19, 21, 23, 25, 31, 32, 33, 35, 39, 40, 42, 44, 50, 53, 55, 71, 75}
]


def make_ava(root: Path) -> dict:
    """A 6 s movie, a second one missing, annotations with several people and actions, exclusions, detections."""
    root.mkdir(parents=True, exist_ok=True)
    write_video(root / "movies" / "-mov_A1.mp4", num_frames=180, width=48, height=32, fps=30, seed=3)
    (root / "action_list.pbtxt").write_text(
        "".join(f'item {{\n  name: "action {i}"\n  id: {i}\n  label_type: PERSON_MOVEMENT\n}}\n' for i in AVA_60_IDS)
    )
    rows = [
        "-mov_A1,0002,0.1,0.2,0.5,0.9,12,0",
        "-mov_A1,0002,0.1,0.2,0.5,0.9,80,0",
        "-mov_A1,0002,0.6,0.1,0.9,0.8,14,1",
        "-mov_A1,0002,0.6,0.1,0.9,0.8,2,1",
        "-mov_A1,0003,0.2,0.2,0.6,0.9,17,0",
        "-mov_A1,0004,0.1,0.1,0.4,0.4,11,3",
        "-mov_A1,0001,0.0,0.0,1.0,1.0,79,5",
        "missing_movie,0002,0.1,0.1,0.2,0.2,1,0",
    ]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "excluded.csv").write_text("-mov_A1,0004\n")
    (root / "detections.csv").write_text(
        "-mov_A1,0002,0.1,0.2,0.5,0.9,,0.97\n-mov_A1,0002,0.3,0.3,0.4,0.4,,0.2\n-mov_A1,0005,0.5,0.5,0.7,0.7,,0.91\n"
    )
    return {
        "action_list": root / "action_list.pbtxt",
        "movies": root / "movies",
        "annotations": root / "train.csv",
        "excluded": root / "excluded.csv",
        "detections": root / "detections.csv",
    }


def make_images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for relative, fmt in [("cat/a.jpg", "JPEG"), ("cat/b.v2.jpg", "JPEG"), ("dog/c.png", "PNG")]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / relative, format=fmt)
    (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
