"""Bad annotation files stop make_shards before any work, with exit code 2 and a message naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfvideo.shards.cli import main as cli_main
from shards_helpers import make_ava, make_kinetics, make_ssv2
from test_shards import read_samples

HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def _kinetics(tmp_path: Path, csv_bytes: bytes, *extra: str) -> tuple[int, Path]:
    data = make_kinetics(tmp_path / "k700")
    data["csv"].write_bytes(csv_bytes)
    out = tmp_path / "out"
    code = cli_main(
        [
            "kinetics",
            "--videos",
            str(data["videos"]),
            "--csv",
            str(data["csv"]),
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )
    return code, data["csv"]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            HEADER + "jumping,abc-DEF_123,10,20,train,0\narchery,zz_top,0\n",
            ":3: 3 values for the 6 columns label,youtube_id,time_start,time_end,split,is_cc",
        ),
        (HEADER + "jumping,abc-DEF_123,10,20,train,0\narchery,zz_top,0,10,train,0,extra\n", ":3: 7 values for the 6"),
        (HEADER + "jumping,,10,20,train,0\n", ":2: no value for youtube_id"),
        (HEADER + "jumping,abc-DEF_123,10,,train,0\n", ":2: no value for time_end"),
        (
            HEADER.encode() + b"jumping,abc-DEF_123,10,20,train,0\nd\xe9jeuner,zz_top,0,10,train,0\n",
            ":3: byte 0xe9 at column 2 is not UTF-8",
        ),
        (
            "youtube_id,time_start,time_end,split\nabc-DEF_123,10,20,test\n",
            ": no 'label' column (found youtube_id, time_start, time_end, split), so every label would be -1; for an "
            "unlabelled split (a test split) pass --unlabelled",
        ),
        ('label,youtube_id,time_start,time_end\njumping,"abc,10,20\n', ":2: 2 values for the 4 columns"),
    ],
)
def test_bad_kinetics_csv_names_file_and_line(tmp_path, capsys, body, message):
    code, csv = _kinetics(tmp_path, body.encode() if isinstance(body, str) else body)
    assert code == 2
    assert f"{csv}{message}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unlabelled_csv_needs_the_flag_and_the_flag_needs_an_unlabelled_csv(tmp_path, capsys):
    code, _ = _kinetics(tmp_path, b"youtube_id,time_start,time_end,split\nabc-DEF_123,10,20,test\n", "--unlabelled")
    assert code == 0
    (sample,) = read_samples(tmp_path / "out")
    assert sample["meta"]["label"] == -1 and sample["meta"]["label_name"] == ""
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["classes"] == []
    code, csv = _kinetics(tmp_path / "again", (HEADER + "jumping,abc-DEF_123,10,20,train,0\n").encode(), "--unlabelled")
    assert code == 2 and f"{csv}: has a 'label' column but --unlabelled was given" in capsys.readouterr().err


def test_csv_saved_with_a_byte_order_mark_keeps_its_label_column(tmp_path):
    code, _ = _kinetics(tmp_path, b"\xef\xbb\xbf" + (HEADER + "jumping,abc-DEF_123,10,20,train,0\n").encode())
    assert code == 0
    assert [s["meta"]["label_name"] for s in read_samples(tmp_path / "out")] == ["jumping"]


def test_bad_list_ava_and_ssv2_files_name_file_and_line(tmp_path, capsys):
    data = make_kinetics(tmp_path / "k")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"jumping/abc-DEF_123_000010_000020.mp4 0\nflat1_000005_000015.mp4 \xff1\n")
    assert (
        cli_main(["kinetics", "--videos", str(data["videos"]), "--list", str(listing), "--out", str(tmp_path / "o1")])
        == 2
    )
    assert f"{listing}:2: byte 0xff at column 25 is not UTF-8" in capsys.readouterr().err

    ava = make_ava(tmp_path / "ava")  # a bad value in an AVA row is a reject (test_shards.py); bad bytes stop it
    args = [
        "ava",
        "--action-list",
        str(ava["action_list"]),
        "--movies",
        str(ava["movies"]),
        "--annotations",
        str(ava["annotations"]),
        "--out",
        str(tmp_path / "o2"),
    ]
    actions = ava["action_list"].read_text()
    ava["action_list"].write_text(actions + "item {\n  name: 'x'\n}\n")
    assert cli_main(args) == 2
    bad_line = actions.count("\n") + 2
    assert f'{ava["action_list"]}:{bad_line}: unexpected "\'" in the label map' in capsys.readouterr().err
    make_ava(tmp_path / "ava")
    ava["annotations"].write_bytes(ava["annotations"].read_bytes() + b"-mov_A1,0003,0.1,0.1,0.4,0.4,\x9a,0\n")
    assert cli_main(args) == 2
    assert f"{ava['annotations']}:9: byte 0x9a at column 30 is not UTF-8" in capsys.readouterr().err

    ssv2 = make_ssv2(tmp_path / "ssv2")
    ssv2["annotations"].write_text('[{"id": "101", "template": "Holding [something]"},\n {"id": }]')
    assert (
        cli_main(
            [
                "ssv2",
                "--labels",
                str(ssv2["labels"]),
                "--annotations",
                str(ssv2["annotations"]),
                "--videos",
                str(ssv2["videos"]),
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert f"{ssv2['annotations']}:2:9: not valid JSON" in capsys.readouterr().err
