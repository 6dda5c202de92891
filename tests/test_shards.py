"""Shard writing from fixture data laid out like each official source; shards are read back with webdataset."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import av
import pytest
import webdataset as wds
from PIL import Image

from mfvideo.common.ava_files import read_label_map
from mfvideo.shards import (
    AvaSource,
    DemoSource,
    ImageFolderSource,
    KineticsSource,
    OutputMismatch,
    Part,
    ShardOptions,
    SourceError,
    SSv2Source,
    make_shards,
    merge_parts,
    sanitize_key,
)
from mfvideo.shards.cli import main as cli_main
from shards_helpers import AVA_60_IDS, make_ava, make_images, make_kinetics, make_ssv2, write_video


def read_samples(out: Path) -> list[dict]:
    """Every sample of a split through webdataset, in manifest order, with the JSON decoded."""
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / shard["file"]) for shard in manifest["shards"]]
    samples = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        sample["meta"] = json.loads(sample["json"])
        samples.append(sample)
    assert len(samples) == manifest["num_samples"]
    return samples


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def test_sanitize_key_removes_dots_and_odd_characters():
    assert sanitize_key("a.b c/d-e_f") == "a_b_c_d-e_f"


def test_kinetics_csv_copies_bytes_and_rejects_missing_and_corrupt(tmp_path):
    data = make_kinetics(tmp_path / "k700")
    out = tmp_path / "shards" / "train"
    summary = make_shards(
        KineticsSource(videos=str(data["videos"]), csv=str(data["csv"])),
        ShardOptions(out=out, max_count=2, progress=False),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["archery", "jumping"]
    assert manifest["format_version"] == 1 and manifest["source"] == "kinetics" and manifest["name"] == "train"
    # blocks of 2 inputs: [0, 1], [2, 3 missing], [4 corrupt, 5]: a shard never takes inputs of the next block
    assert [(s["file"], s["num_samples"]) for s in manifest["shards"]] == [
        ("train-000000.tar", 2),
        ("train-000001.tar", 1),
        ("train-000002.tar", 1),
    ]
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
        assert (out / shard["file"]).stat().st_size == shard["bytes"]
    samples = read_samples(out)
    by_id = {s["meta"]["id"]: s for s in samples}
    assert list(by_id) == [
        "abc-DEF_123_000010_000020",
        "zz_top_000000_000010",
        "flat1_000005_000015",
        "unlabelled_000007_000017",
    ]
    first = by_id["abc-DEF_123_000010_000020"]
    assert first["__key__"] == "abc-DEF_123_000010_000020"
    assert first["mp4"] == (data["videos"] / "jumping" / "abc-DEF_123_000010_000020.mp4").read_bytes()
    assert first["meta"] | {} == {
        "id": "abc-DEF_123_000010_000020",
        "label": 1,
        "label_name": "jumping",
        "fps": 30.0,
        "num_frames": 20,
        "width": 32,
        "height": 24,
        "duration": 0.666667,
        "source": "kinetics",
    }
    assert by_id["zz_top_000000_000010"]["meta"]["label"] == 0
    assert by_id["unlabelled_000007_000017"]["meta"]["label"] == -1
    reasons = {r["id"]: r["reason"] for r in rejects(out)}
    assert set(reasons) == {"gone_000001_000011", "broken_000003_000013"}
    assert reasons["gone_000001_000011"] == "missing file"
    assert "cannot open" in reasons["broken_000003_000013"]
    assert summary.num_rejects == 2 and summary.num_samples == 4


def test_kinetics_class_map_fixes_label_ids_and_unknown_class_is_an_error(tmp_path):
    data = make_kinetics(tmp_path / "k")
    class_map = tmp_path / "classes.txt"
    class_map.write_text("jumping\narchery\nbowling\n")
    make_shards(
        KineticsSource(videos=str(data["videos"]), csv=str(data["csv"]), class_map=str(class_map)),
        ShardOptions(out=tmp_path / "o", progress=False),
    )
    labels = {s["meta"]["id"][:4]: s["meta"]["label"] for s in read_samples(tmp_path / "o")}
    assert labels["abc-"] == 0 and labels["zz_t"] == 1
    class_map.write_text("jumping\n")
    with pytest.raises(SourceError, match=r"train.csv:3: class 'archery' is not in the class list"):
        KineticsSource(videos=str(data["videos"]), csv=str(data["csv"]), class_map=str(class_map)).list_items()


def test_kinetics_list_with_dotted_ids_gets_unique_dotless_keys(tmp_path):
    videos = tmp_path / "videos"
    for name in ("clip.v1.mp4", "clip_v1.mp4", "other.mp4"):
        write_video(videos / name, num_frames=10)
    listing = tmp_path / "list.txt"
    listing.write_text("clip.v1.mp4 1\nclip_v1.mp4 0\nother.mp4 1\n")
    make_shards(
        KineticsSource(videos=str(videos), list_file=str(listing)), ShardOptions(out=tmp_path / "o", progress=False)
    )
    samples = read_samples(tmp_path / "o")
    assert [(s["__key__"], s["meta"]["id"], s["meta"]["label"]) for s in samples] == [
        ("clip_v1", "clip.v1", 1),
        ("clip_v1-1", "clip_v1", 0),
        ("other", "other", 1),
    ]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["classes"] == ["0", "1"]


def _keyframe_indices(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as container:
        return [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]


def test_short_side_reencodes_h264_with_fps_kept_and_one_keyframe_per_second(tmp_path):
    source = write_video(tmp_path / "videos" / "big.webm", num_frames=40, width=64, height=48, fps=20)
    listing = tmp_path / "list.txt"
    listing.write_text("big.webm 0\n")
    make_shards(
        KineticsSource(videos=str(tmp_path / "videos"), list_file=str(listing)),
        ShardOptions(out=tmp_path / "o", short_side=24, progress=False),
    )
    (sample,) = read_samples(tmp_path / "o")
    assert "mp4" in sample and "webm" not in sample
    assert {k: sample["meta"][k] for k in ("fps", "num_frames", "width", "height")} == {
        "fps": 20.0,
        "num_frames": 40,
        "width": 32,
        "height": 24,
    }
    with av.open(io.BytesIO(sample["mp4"])) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert _keyframe_indices(sample["mp4"]) == [0, 20]
    assert source.exists()


def test_ssv2_labels_from_templates_webm_copied(tmp_path):
    data = make_ssv2(tmp_path / "ssv2")
    make_shards(SSv2Source(**{k: str(v) for k, v in data.items()}), ShardOptions(out=tmp_path / "o", progress=False))
    samples = read_samples(tmp_path / "o")
    assert [(s["__key__"], s["meta"]["label"], s["meta"]["fps"]) for s in samples] == [
        ("101", 0, 12.0),
        ("102", 1, 12.0),
        ("103", 2, 12.0),
    ]
    assert samples[1]["meta"]["label_name"] == "Pushing something from left to right"
    assert samples[0]["webm"] == (data["videos"] / "101.webm").read_bytes()
    assert rejects(tmp_path / "o") == [
        {"id": "104", "path": str(data["videos"] / "104.webm"), "reason": "missing file"}
    ]


def test_ava_one_sample_per_keyframe_with_grouped_boxes(tmp_path):
    data = make_ava(tmp_path / "ava")
    assert list(read_label_map(str(data["action_list"])).names) == AVA_60_IDS and len(AVA_60_IDS) == 60
    source = AvaSource(**{k: str(v) for k, v in data.items()}, min_detection_score=0.5)
    make_shards(source, ShardOptions(out=tmp_path / "o", progress=False))
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert len(manifest["classes"]) == 80 and manifest["classes"][11] == "action 12" and manifest["classes"][1] == ""
    samples = {s["meta"]["id"]: s["meta"] for s in read_samples(tmp_path / "o")}
    assert list(samples) == ["-mov_A1_0001", "-mov_A1_0002", "-mov_A1_0003", "-mov_A1_0005"]  # 0004 excluded
    kf2 = samples["-mov_A1_0002"]
    assert kf2["boxes"] == [[0.1, 0.2, 0.5, 0.9], [0.6, 0.1, 0.9, 0.8]]
    assert kf2["labels"] == [[12, 80], [14]]  # action 2 is not in the 60-class list
    assert kf2["person_ids"] == [0, 1]
    assert kf2["det_boxes"] == [[0.1, 0.2, 0.5, 0.9]] and kf2["det_scores"] == [0.97]
    assert kf2["timestamp"] == 2 and kf2["video_id"] == "-mov_A1" and kf2["label"] == -1
    assert kf2["keyframe_sec"] == 1.5 and kf2["num_frames"] == 90 and kf2["fps"] == 30.0
    assert samples["-mov_A1_0001"]["keyframe_sec"] == 1.0  # the cut starts at the movie's beginning
    assert samples["-mov_A1_0005"]["boxes"] == [] and samples["-mov_A1_0005"]["det_scores"] == [0.91]
    assert samples["-mov_A1_0005"]["num_frames"] == 75  # 3.5 s to the movie's end at 6 s
    assert [r["id"] for r in rejects(tmp_path / "o")] == ["missing_movie_0002"]


def test_ava_rows_with_bad_values_and_keyframes_outside_the_movie_are_rejects_the_rest_is_used(tmp_path):
    data = make_ava(tmp_path / "ava")
    bad = {
        "-mov_A1,0003,0.5,0.2,0.4,0.9,17,1": "box ['0.5', '0.2', '0.4', '0.9'] is not normalised",  # x2 < x1
        "-mov_A1,0003,0.2,0.2,0.6,1.2,17,2": "box ['0.2', '0.2', '0.6', '1.2'] is not normalised",
        "-mov_A1,0003,0.2,0.2,0.6,0.9,81,3": "unknown action id 81 (known: 1..80)",
        "-mov_A1,0003,0.2,0.2,0.6,0.9,0,3": "unknown action id 0 (known: 1..80)",
        "-mov_A1,0003,0.2,0.2,0.6,0.9,17": "expected 8 columns",
        "-mov_A1,-0001,0.2,0.2,0.6,0.9,17,4": "timestamp '-0001' is before the movie's start",
        "-mov_A1,0003.5,0.2,0.2,0.6,0.9,17,4": "timestamp '0003.5' is not a whole second",
        "-mov_A1,0007,0.2,0.2,0.6,0.9,17,4": None,  # a valid row whose keyframe is past the 6-s movie's end
    }
    lines = data["annotations"].read_text().splitlines()
    data["annotations"].write_text("\n".join([*lines, *bad]) + "\n")
    data["detections"].write_text(data["detections"].read_text() + "-mov_A1,0003,0.1,0.1,0.2,0.2\n")
    data["excluded"].write_text(data["excluded"].read_text() + "-mov_A1\n")
    source = AvaSource(**{k: str(v) for k, v in data.items()}, min_detection_score=0.5)
    make_shards(source, ShardOptions(out=tmp_path / "o", progress=False))

    samples = {s["meta"]["id"]: s["meta"] for s in read_samples(tmp_path / "o")}
    assert list(samples) == ["-mov_A1_0001", "-mov_A1_0002", "-mov_A1_0003", "-mov_A1_0005"]
    assert samples["-mov_A1_0003"]["boxes"] == [[0.2, 0.2, 0.6, 0.9]] and samples["-mov_A1_0003"]["labels"] == [[17]]
    found = rejects(tmp_path / "o")
    expected_rows = [(f"train.csv:{len(lines) + 1 + i}", reason) for i, reason in enumerate(bad.values()) if reason]
    rows = [(r["id"], r["reason"]) for r in found[: len(expected_rows)]]
    assert [where for where, _ in rows] == [where for where, _ in expected_rows]
    assert all(reason.startswith(prefix) for (_, reason), (_, prefix) in zip(rows, expected_rows)), rows
    assert {r["path"] for r in found[: len(expected_rows)]} == {str(data["annotations"])}
    assert [(r["id"], r["path"]) for r in found[len(expected_rows) : len(expected_rows) + 2]] == [
        ("detections.csv:4", str(data["detections"])),
        ("excluded.csv:2", str(data["excluded"])),
    ]
    outside, missing = found[len(expected_rows) + 2 :]
    assert outside["id"] == "-mov_A1_0007" and outside["reason"].startswith("keyframe 7 s is outside the movie")
    assert missing["id"] == "missing_movie_0002"

    # split over machines, the listing's rejects are written once and the merged split is the one-machine split
    for index in range(2):
        make_shards(
            source, ShardOptions(out=tmp_path / "parts" / "train", max_count=2, progress=False, part=Part(index, 2))
        )
    merge_parts(tmp_path / "parts" / "train")
    make_shards(source, ShardOptions(out=tmp_path / "whole" / "train", max_count=2, progress=False))
    assert digests(tmp_path / "parts" / "train") == digests(tmp_path / "whole" / "train")
    assert rejects(tmp_path / "whole" / "train") == found


def test_images_become_single_frame_jpegs(tmp_path):
    root = make_images(tmp_path / "imgs")
    make_shards(ImageFolderSource(root=str(root)), ShardOptions(out=tmp_path / "o", progress=False))
    samples = read_samples(tmp_path / "o")
    assert [(s["__key__"], s["meta"]["label_name"]) for s in samples] == [
        ("cat_a", "cat"),
        ("cat_b_v2", "cat"),
        ("dog_c", "dog"),
    ]
    assert samples[0]["jpg"] == (root / "cat" / "a.jpg").read_bytes()
    png_as_jpeg = Image.open(io.BytesIO(samples[2]["jpg"]))
    assert png_as_jpeg.format == "JPEG" and png_as_jpeg.size == (30, 20)
    assert {k: samples[2]["meta"][k] for k in ("num_frames", "width", "height", "fps")} == {
        "num_frames": 1,
        "width": 30,
        "height": 20,
        "fps": 0,
    }
    assert [r["id"] for r in rejects(tmp_path / "o")] == ["dog/bad"]


def test_tar_members_have_fixed_metadata_and_shards_respect_max_size(tmp_path):
    source = DemoSource(num_videos=6, width=32, height=32, min_frames=8, max_frames=10)
    make_shards(source, ShardOptions(out=tmp_path / "o", max_size=1, progress=False))
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [1] * 6
    with tarfile.open(tmp_path / "o" / "o-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["demo0_000000.json", "demo0_000000.mp4"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}


def test_demo_is_deterministic_and_rerun_with_other_args_is_refused(tmp_path):
    source = DemoSource(num_videos=12, num_motions=3, width=32, height=32, min_frames=8, max_frames=12, seed=7)
    make_shards(source, ShardOptions(out=tmp_path / "a" / "train", max_count=5, progress=False))
    make_shards(source, ShardOptions(out=tmp_path / "b" / "train", max_count=5, progress=False))
    assert digests(tmp_path / "a" / "train") == digests(tmp_path / "b" / "train")
    samples = read_samples(tmp_path / "a" / "train")
    assert sorted(s["meta"]["label"] for s in samples) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert all(s["meta"]["label_name"] == ["move_right", "move_left", "move_down"][s["meta"]["label"]] for s in samples)
    other = DemoSource(num_videos=12, num_motions=3, width=32, height=32, min_frames=8, max_frames=12, seed=8)
    with pytest.raises(OutputMismatch, match="other arguments"):
        make_shards(other, ShardOptions(out=tmp_path / "a" / "train", max_count=5, progress=False))
    make_shards(other, ShardOptions(out=tmp_path / "a" / "train", max_count=5, progress=False, overwrite=True))
    assert digests(tmp_path / "a" / "train") != digests(tmp_path / "b" / "train")


@pytest.mark.slow
def test_workers_do_not_change_output(tmp_path):
    data = make_kinetics(tmp_path / "k")
    args = [
        "kinetics",
        "--videos",
        str(data["videos"]),
        "--csv",
        str(data["csv"]),
        "--max-count",
        "3",
        "--short-side",
        "16",
        "--no-progress",
    ]
    assert cli_main(args + ["--out", str(tmp_path / "w1" / "val")]) == 0
    assert cli_main(args + ["--out", str(tmp_path / "w2" / "val"), "--workers", "2"]) == 0
    assert digests(tmp_path / "w1" / "val") == digests(tmp_path / "w2" / "val")
    assert len(rejects(tmp_path / "w2" / "val")) == 2


def test_interrupted_job_keeps_the_rejects_of_its_finished_shards(tmp_path, monkeypatch):
    """Rejects are recorded with the shard that follows them; a rerun that keeps that shard must keep them too."""
    import mfvideo.shards.writer as writer

    data = make_kinetics(tmp_path / "k700")
    source = KineticsSource(videos=str(data["videos"]), csv=str(data["csv"]))
    make_shards(source, ShardOptions(out=tmp_path / "whole" / "train", max_count=1, progress=False))

    def interrupt(*args):  # every shard is finished and recorded; the job dies before its manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_manifest", interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_shards(source, ShardOptions(out=tmp_path / "resumed" / "train", max_count=1, progress=False))
    monkeypatch.undo()
    summary = make_shards(source, ShardOptions(out=tmp_path / "resumed" / "train", max_count=1, progress=False))
    assert summary.resumed_shards == summary.num_shards
    for name in ("rejects.jsonl", "manifest.json"):
        assert (tmp_path / "resumed" / "train" / name).read_bytes() == (
            tmp_path / "whole" / "train" / name
        ).read_bytes()
    assert len((tmp_path / "whole" / "train" / "rejects.jsonl").read_text().splitlines()) == 2
