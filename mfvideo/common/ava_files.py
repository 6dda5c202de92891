"""AVA's file formats, read by the shard source (`mfvideo.shards.sources.ava`) and the evaluation
(`mfvideo.evaluation.ava`). Every error is an `AvaFormatError` naming the file and line.

- Action list / label map (`ava_action_list_v2.2.pbtxt`, `ava_action_list_v2.2_for_activitynet_2019.pbtxt`): protobuf
  text, blocks `label { name: "…" label_id: N label_type: T }` (the full 80-action list) or `item { name: "…" id: N }`
  (the 60-action ActivityNet-2019 list). `read_label_map` gives each action's name and group (pose, object,
  interaction): from `label_type` where the file has it, else from AVA's id ranges (see `GROUP_ID_RANGES`).
- Ground truth (`ava_{train,val}_v2.2.csv`): `video_id,timestamp,x1,y1,x2,y2,action_id,person_id`, one row per
  (person box, action); boxes normalised to the frame, 0 ≤ x1 ≤ x2 ≤ 1, 0 ≤ y1 ≤ y2 ≤ 1; timestamps whole seconds
  (AVA writes them with 4 digits, `0902`).
- Excluded timestamps (`ava_{train,val}_excluded_timestamps_v2.2.csv`): `video_id,timestamp`.
- Person detections (the proposals shards carry): `video_id,timestamp,x1,y1,x2,y2[,action_id],score`, the action
  column ignored (AVA's files leave it empty).
- Action detections (what a detector outputs and the evaluation scores): `video_id,timestamp,x1,y1,x2,y2,action_id,
  score`, one row per (box, action).

CSV files are read row by row (a detections file of a full validation set has millions of rows); UTF-8, a leading
byte-order mark allowed.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from mfvideo.common.fileio import PathEscape, plain_name

Keyframe = tuple[str, int]  # (video_id, second)
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 normalised to the frame

# AVA's three action groups, named after the pbtxt's label_type values.
GROUPS = {"PERSON_MOVEMENT": "pose", "OBJECT_MANIPULATION": "object", "PERSON_INTERACTION": "interaction"}
# Where a list has no label_type (the ActivityNet-2019 60-action list): AVA numbers its 80 actions group by group,
# 14 pose actions (1 "bend/bow (at the waist)" … 14 "walk"), 49 object manipulations (15 "answer phone" … 63
# "write"), 17 person interactions (64 "fight/hit (a person)" … 80 "watch (a person)"). Checked against public code
# listing the v2.2 actions in id order with these groups (MVIG-SJTU AlphAction's category notes: 1–14, 15–63,
# 64–80) and against a quoted entry of ava_action_list_v2.2.pbtxt (57 "text on/look at a cellphone",
# OBJECT_MANIPULATION); the official pbtxt itself was not among the searchable sources, so label_type, where a list
# has it, always decides.
GROUP_ID_RANGES = {"pose": range(1, 15), "object": range(15, 64), "interaction": range(64, 81)}


class AvaFormatError(ValueError):
    """A malformed AVA file; the message names the file and line."""


@dataclass(frozen=True)
class LabelMap:
    """The actions of an action list, in ascending id order."""

    names: dict[int, str]  # action id -> name
    groups: dict[int, str]  # action id -> group (a value of GROUPS), for the actions that have one

    @property
    def known_actions(self) -> range:
        """The action ids files may use alongside this list: 1 to its largest id. Those the list leaves out (20 of
        AVA's 80 for the 60-action list) are dropped where the list applies; ids outside the range are errors."""
        return range(1, max(self.names) + 1)


class Annotation(NamedTuple):
    keyframe: Keyframe
    box: Box
    action: int
    person: int


class PersonDetection(NamedTuple):
    keyframe: Keyframe
    box: Box
    score: float


class ActionDetection(NamedTuple):
    keyframe: Keyframe
    box: Box
    action: int
    score: float


# ----- text -------------------------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    """A whole (small) file as text; bytes that are not UTF-8 are an error naming the file and line."""
    return "".join(_decoded_lines(path))


def _decoded_lines(path: str) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise AvaFormatError(
                    f"{path}:{number}: byte {raw[err.start]:#04x} at column {err.start + 1} is not "
                    f"UTF-8; save the file as UTF-8"
                ) from None


# ----- label map --------------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r'(?P<space>[ \t\r\n]+|#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<word>[A-Za-z_][A-Za-z0-9_]*)'
    r"|(?P<number>-?[0-9]+)|(?P<punct>[{}:])"
)
_BLOCKS = ("item", "label")
_ID_FIELDS = ("id", "label_id")
_FIELDS = ("name", "display_name", "label_type") + _ID_FIELDS


def _tokens(path: str, text: str) -> Iterator[tuple[int, str, str]]:
    """(line, kind, text) of every token of protobuf text, comments and spaces left out."""
    line, position = 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise AvaFormatError(f"{path}:{line}: unexpected {text[position]!r} in the label map")
        if match.lastgroup != "space":
            yield line, match.lastgroup, match.group()
        line += match.group().count("\n")
        position = match.end()


def _parse_blocks(path: str, text: str) -> list[tuple[int, dict[str, tuple[int, str, str]]]]:
    """[(line of the block, {field: (line, kind, value)})] of `item { … }` / `label { … }` blocks."""
    tokens = list(_tokens(path, text))
    blocks, position = [], 0

    def take(what: str) -> tuple[int, str, str]:
        nonlocal position
        if position == len(tokens):
            raise AvaFormatError(f"{path}:{tokens[-1][0]}: the label map ends where {what} was expected")
        position += 1
        return tokens[position - 1]

    while position < len(tokens):
        line, kind, value = take("a block")
        if kind != "word" or value not in _BLOCKS:
            raise AvaFormatError(f"{path}:{line}: expected a block {' or '.join(_BLOCKS)} {{ … }}, found {value!r}")
        brace = take("'{'")
        if brace[2] != "{":
            raise AvaFormatError(f"{path}:{brace[0]}: expected '{{' after {value!r}, found {brace[2]!r}")
        fields: dict[str, tuple[int, str, str]] = {}
        while True:
            field_line, field_kind, field = take("a field or '}'")
            if field == "}":
                break
            if field_kind != "word" or field not in _FIELDS:
                raise AvaFormatError(f"{path}:{field_line}: unknown field {field!r} (known: {', '.join(_FIELDS)})")
            colon = take("':'")
            if colon[2] != ":":
                raise AvaFormatError(f"{path}:{colon[0]}: expected ':' after {field}, found {colon[2]!r}")
            if field in fields:
                raise AvaFormatError(f"{path}:{field_line}: {field} given twice in one {value} block")
            fields[field] = take(f"a value for {field}")
        blocks.append((line, fields))
    return blocks


def read_label_map(path: str) -> LabelMap:
    """An AVA action list (pbtxt) -> LabelMap. Each block needs a name and an id ≥ 1, ids are unique; label_type,
    when given, is one of GROUPS."""
    names: dict[int, str] = {}
    groups: dict[int, str] = {}
    for line, fields in _parse_blocks(path, _read_text(path)):
        id_fields = [field for field in _ID_FIELDS if field in fields]
        if "name" not in fields or len(id_fields) != 1:
            raise AvaFormatError(f"{path}:{line}: a block needs a name and one of {' or '.join(_ID_FIELDS)}")
        name_line, name_kind, name = fields["name"]
        if name_kind != "string":
            raise AvaFormatError(f"{path}:{name_line}: name must be a quoted string, found {name!r}")
        id_line, id_kind, id_text = fields[id_fields[0]]
        if id_kind != "number" or int(id_text) < 1:
            raise AvaFormatError(f"{path}:{id_line}: action id must be an integer ≥ 1, found {id_text!r}")
        action = int(id_text)
        if action in names:
            raise AvaFormatError(f"{path}:{id_line}: action id {action} appears twice")
        names[action] = re.sub(r"\\(.)", r"\1", name[1:-1])
        if "label_type" in fields:
            type_line, _, label_type = fields["label_type"]
            if label_type not in GROUPS:
                raise AvaFormatError(f"{path}:{type_line}: label_type {label_type!r} is not one of {', '.join(GROUPS)}")
            groups[action] = GROUPS[label_type]
        else:
            groups.update((action, group) for group, ids in GROUP_ID_RANGES.items() if action in ids)
    if not names:
        raise AvaFormatError(f"{path}: no action items found")
    order = sorted(names)
    return LabelMap({a: names[a] for a in order}, {a: groups[a] for a in order if a in groups})


# ----- CSV files --------------------------------------------------------------------------------------------------
def _rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of every non-empty row, the line being where the row starts."""
    reader = csv.reader(_decoded_lines(path))
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise AvaFormatError(f"{path}:{line}: not a CSV row: {err}") from None
        if row:
            yield line, row


class _BadValue(Exception):
    """A bad value in a row; the reader adds the file and line (formatted only when there is an error)."""


def _keyframe(video_id: str, timestamp: str) -> Keyframe:
    if not video_id:
        raise _BadValue("no video_id")
    try:
        plain_name(video_id, "video_id")  # it names a movie file: a path would reach outside the movies folder
    except PathEscape as err:
        raise _BadValue(str(err)) from None
    try:
        second = float(timestamp)
    except ValueError:
        raise _BadValue(f"bad timestamp {timestamp!r}") from None
    if not second.is_integer():
        raise _BadValue(f"timestamp {timestamp!r} is not a whole second (AVA's keyframes are)")
    if second < 0:
        raise _BadValue(f"timestamp {timestamp!r} is before the movie's start")
    return video_id, int(second)


def _box(values: list[str]) -> Box:
    try:
        x1, y1, x2, y2 = map(float, values)
    except ValueError:
        raise _BadValue(f"bad box {values}") from None
    if not (0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0):
        raise _BadValue(f"box {values} is not normalised x1<=x2, y1<=y2 in [0, 1]")
    return x1, y1, x2, y2


def _integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _BadValue(f"bad {what} {value!r}") from None


def _action(value: str, known: range | None) -> int:
    action = _integer(value, "action_id")
    if known is not None and action not in known:
        raise _BadValue(f"unknown action id {action} (known: {known.start}..{known.stop - 1})")
    return action


def _score(value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise _BadValue(f"bad score {value!r}") from None
    if not math.isfinite(score):
        raise _BadValue(f"score {value!r} is not a finite number")
    return score


def _annotation(row: list[str], known: range | None) -> Annotation:
    if len(row) != 8:
        raise _BadValue("expected 8 columns video_id,timestamp,x1,y1,x2,y2,action_id,person_id")
    return Annotation(_keyframe(row[0], row[1]), _box(row[2:6]), _action(row[6], known), _integer(row[7], "person_id"))


def _excluded(row: list[str]) -> Keyframe:
    if len(row) != 2:
        raise _BadValue("expected 2 columns video_id,timestamp")
    return _keyframe(row[0], row[1])


def _person_detection(row: list[str]) -> PersonDetection:
    if len(row) < 7:
        raise _BadValue("expected video_id,timestamp,x1,y1,x2,y2,[action_id,]score")
    return PersonDetection(_keyframe(row[0], row[1]), _box(row[2:6]), _score(row[-1]))


def _action_detection(row: list[str], known: range | None) -> ActionDetection:
    if len(row) != 8:
        raise _BadValue(
            "expected 8 columns video_id,timestamp,x1,y1,x2,y2,action_id,score"
            + (" (no score column?)" if len(row) == 7 else "")
        )
    return ActionDetection(_keyframe(row[0], row[1]), _box(row[2:6]), _action(row[6], known), _score(row[7]))


BadRow = Callable[[int, str], None]
"""Called with (line, reason) for a row whose values are bad, which is then skipped: lets a reader that must not stop
for one row (the shard writer, which records it as a reject) keep going. Without it such a row is an error."""


def _parsed(path: str, parse, *args, on_bad_row: BadRow | None = None) -> Iterator:
    """`parse(row, *args)` of every row of the CSV file at `path`, errors naming the file and line. A file that is
    not UTF-8 CSV is always an error; a row with bad values goes to `on_bad_row` where one is given."""
    for line, row in _rows(path):
        try:
            value = parse(row, *args)
        except _BadValue as err:
            if on_bad_row is None:
                raise AvaFormatError(f"{path}:{line}: {err}") from None
            on_bad_row(line, str(err))
            continue
        yield value


def read_annotations(
    path: str, known_actions: range | None = None, on_bad_row: BadRow | None = None
) -> Iterator[Annotation]:
    """The rows of a ground-truth CSV, in file order; with `known_actions`, other action ids are bad values."""
    return _parsed(path, _annotation, known_actions, on_bad_row=on_bad_row)


def read_excluded(path: str, on_bad_row: BadRow | None = None) -> set[Keyframe]:
    """The keyframes of an excluded-timestamps CSV."""
    return set(_parsed(path, _excluded, on_bad_row=on_bad_row))


def read_person_detections(path: str, on_bad_row: BadRow | None = None) -> Iterator[PersonDetection]:
    """The rows of a person-detections CSV (score in the last column), in file order."""
    return _parsed(path, _person_detection, on_bad_row=on_bad_row)


def read_action_detections(path: str, known_actions: range | None = None) -> Iterator[ActionDetection]:
    """The rows of an action-detections CSV, in file order; with `known_actions`, other action ids are an error."""
    return _parsed(path, _action_detection, known_actions)
