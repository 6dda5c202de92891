"""One logging set-up: rank 0 prints info; every rank prints warnings and errors, tagged with its rank."""

import logging

from mfvideo.common.log import setup_logging


def emit(capsys, rank: int, world_size: int) -> str:
    setup_logging(rank=rank, world_size=world_size)
    log = logging.getLogger("mfvideo.test")
    log.info("progress line")
    log.warning("something odd")
    log.error("something broke")
    return capsys.readouterr().err


def test_rank_zero_prints_everything_tagged(capsys):
    err = emit(capsys, rank=0, world_size=2)
    assert "progress line" in err and "[rank 0] mfvideo.test: something odd" in err and "something broke" in err


def test_other_ranks_print_only_warnings_and_errors_with_their_rank(capsys):
    err = emit(capsys, rank=3, world_size=4)
    assert "progress line" not in err
    assert "[rank 3] mfvideo.test: something odd" in err and "[rank 3] mfvideo.test: something broke" in err


def test_single_process_is_untagged(capsys):
    err = emit(capsys, rank=0, world_size=1)
    assert "progress line" in err and "[rank" not in err


def teardown_module():
    setup_logging(rank=0, world_size=1, level=logging.WARNING)
