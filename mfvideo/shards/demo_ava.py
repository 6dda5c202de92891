"""A procedural dataset laid out like AVA v2.2, small enough that action detection trains and tests on a CPU.

`make_shards.py demo-ava --out DIR` writes the files a user downloads for AVA (names as in AVA v2.2, person
detections named as PySlowFast's), which `make_shards.py ava` turns into shards like the real ones:

    movies/<video_id>.mp4                               H.264, `seconds` long at `fps`, width × height
    ava_action_list_v2.2.pbtxt                          every action: label { name, label_id, label_type }
    ava_action_list_v2.2_for_activitynet_2019.pbtxt     the evaluated subset: item { name, id, label_type }
    ava_included_timestamps_v2.2.txt                    the keyframe seconds, one per line
    ava_{train,val}_v2.2.csv                            video_id,timestamp,x1,y1,x2,y2,action_id,person_id
    ava_{train,val}_excluded_timestamps_v2.2.csv        video_id,timestamp
    ava_{train,val}_predicted_boxes.csv                 video_id,timestamp,x1,y1,x2,y2,,score

Movies: 1–3 actors (textured shapes: disc, ellipse or square, striped in the actor's own frame so that a turn
shows even on a disc) over a dim static textured background. Every background channel stays below 115 and every
actor pixel has a channel of at least 150, so "the actor's pixels" is a plain threshold on decoded frames.

Keyframes: every integer second from 2 to `seconds` − 2, as AVA annotates 902..1798 of its 900..1800 s segments,
so that the ±1.5 s clip around each lies inside the movie. The first, fifth, ninth... movie of each split has one
keyframe (drawn at random) excluded: no ground truth, listed in the excluded-timestamps file, detections as usual.
Train and val are disjoint movies: the last `val_movies` are val.

Actions (`ACTIONS`, ids grouped like AVA's: pose first, then objects, then interactions), multi-label, each set by
motion alone (position, shape, colour, size and angle at one frame are drawn independently of it):
- pose, exactly one per actor: stand (no horizontal motion), walk left, walk right (constant speed);
- object: turn clockwise / counterclockwise on screen (constant angular speed; the stripes turn), grow / shrink
  (the radius changes by a constant factor per second);
- interaction: walk toward (another actor): walking in the direction of another actor's centre.
Rule: an actor's actions are fixed for the whole movie; actors never pass each other horizontally (their x order
and a gap between them hold from the first frame to the last), so "walk toward" is fixed too. The ±1.5 s window of
every keyframe, and the 16×4 clip centred on it, shows the same actions. Ground-truth boxes are the tight pixel
extent of each actor's shape at the keyframe frame (`timestamp × fps`); `person_id` is the actor's index.
Turn counterclockwise and shrink are rare and left out of the ActivityNet-style subset (AVA's 60 of 80 drop rare
actions); they are still trained on.

Detections: per keyframe, each actor's box jittered (about 4% of its size) with a score ≥ 0.8, or missed, or
reported weakly (< 0.8); a false positive with a low score on most keyframes, and one scored ≥ 0.8 on some.

Every byte is a function of the spec alone; a movie's pixels depend only on the seed, its index and the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mfvideo.common.fileio import write_atomic
from mfvideo.shards.drawing import SQUARE_HALF_SIDE, background, local_coordinates, shape_mask, vivid_colour
from mfvideo.shards.encode import encode_rgb_frames
from mfvideo.shards.sources.common import SourceError

SPLITS = ("train", "val")
FULL_ACTION_LIST = "ava_action_list_v2.2.pbtxt"
EVALUATED_ACTION_LIST = "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
INCLUDED_TIMESTAMPS = "ava_included_timestamps_v2.2.txt"


def annotations_file(split: str) -> str:
    return f"ava_{split}_v2.2.csv"


def excluded_file(split: str) -> str:
    return f"ava_{split}_excluded_timestamps_v2.2.csv"


def detections_file(split: str) -> str:
    return f"ava_{split}_predicted_boxes.csv"


@dataclass(frozen=True)
class Action:
    id: int
    name: str
    group: str  # the pbtxt's label_type
    evaluated: bool  # in the ActivityNet-style subset


_WALK_TOWARD = "walk toward (another actor)"
ACTIONS = (
    Action(1, "stand", "PERSON_MOVEMENT", True),
    Action(2, "walk left", "PERSON_MOVEMENT", True),
    Action(3, "walk right", "PERSON_MOVEMENT", True),
    Action(4, "turn clockwise", "OBJECT_MANIPULATION", True),
    Action(5, "turn counterclockwise", "OBJECT_MANIPULATION", False),
    Action(6, "grow", "OBJECT_MANIPULATION", True),
    Action(7, "shrink", "OBJECT_MANIPULATION", False),
    Action(8, _WALK_TOWARD, "PERSON_INTERACTION", True),
)
_ACTION_ID = {action.name: action.id for action in ACTIONS}
# How often each motion is drawn (the rare ones are those the evaluated subset leaves out); None: no such motion.
_POSES = {"stand": 0.4, "walk left": 0.3, "walk right": 0.3}
_TURNS = {None: 0.5, "turn clockwise": 0.35, "turn counterclockwise": 0.15}
_SIZES = {None: 0.55, "grow": 0.3, "shrink": 0.15}

_ACTOR_COUNTS = {1: 0.25, 2: 0.4, 3: 0.35}
_SHAPES = ("disc", "ellipse", "square")  # centrally symmetric: a box's centre is the actor's, whatever its angle
_REACH = {"disc": 1.0, "ellipse": 1.0, "square": SQUARE_HALF_SIDE * np.sqrt(2)}  # farthest pixel / radius
_RADIUS = (0.10, 0.15)  # radius at mid-movie, times the short side
_SIZE_RATIO = (1.6, 2.2)  # radius at the end / at the start, for grow (its inverse for shrink)
_TRAVEL = (0.45, 0.8)  # a walker's distance over the movie, times the width it has room for
_TURN_SPEED = (0.6, 1.2)  # radians per second
_STRIPE_PERIOD = 0.7  # times the radius
_STRIPE_SHADE = 0.75  # the darker stripes' brightness
_BRIGHTEST = (200.0, 255.0)  # an actor's strongest channel: >= 200 * 0.75 = 150 on either stripe
_BACKGROUND_SCALE = 0.45  # the demo background (<= 255) dimmed to <= 115
_CASTING_ATTEMPTS = 20  # draws of a whole cast before trying one actor fewer
_FRAMES_PER_CHUNK = 64  # frames drawn in one vectorised step (bounds memory for long movies)

_KEYFRAME_MARGIN = 2  # seconds without keyframes at each end of a movie
_EXCLUDE_EVERY = 4  # one keyframe excluded in the first of every this many movies of a split
_CONFIDENT = 0.8  # the detection score AVA recipes keep proposals from
_MISSED, _WEAK = 0.08, 0.10  # chance an actor is not detected / detected below _CONFIDENT
_LOW_FALSE, _HIGH_FALSE = 0.6, 0.1  # chance per keyframe of a false positive below / at or above _CONFIDENT
_JITTER = 0.04  # detection box noise, times the box's width or height
# Score ranges (written with 3 decimals, so the weak ones stay below _CONFIDENT): detected actors, weakly detected
# ones, false positives below and at or above _CONFIDENT.
_HIT_SCORES, _WEAK_SCORES = (0.82, 0.999), (0.3, 0.79)
_LOW_FALSE_SCORES, _HIGH_FALSE_SCORES = (0.02, 0.5), (_CONFIDENT, 0.95)


@dataclass(frozen=True)
class DemoAvaSpec:
    num_movies: int = 40  # train + val
    val_movies: int | None = None  # default: a fifth of num_movies, at least 1
    seconds: int = 10
    width: int = 128
    height: int = 96
    fps: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        def check(ok: bool, option: str, allowed: str, value) -> None:
            if not ok:
                raise SourceError(f"demo-ava {option} must be {allowed}, got {value}")

        check(2 <= self.num_movies <= 10000, "--num-movies", "in 2..10000 (train and val)", self.num_movies)
        check(
            1 <= self.num_val_movies < self.num_movies, "--val-movies", f"in 1..{self.num_movies - 1}", self.val_movies
        )
        check(5 <= self.seconds <= 900, "--seconds", "in 5..900 (keyframes from 2 to seconds - 2)", self.seconds)
        for option, value in (("--width", self.width), ("--height", self.height)):
            check(48 <= value <= 1024 and value % 2 == 0, option, "even and in 48..1024", value)
        check(10 <= self.fps <= 60, "--fps", "in 10..60", self.fps)
        check(self.seed >= 0, "--seed", ">= 0", self.seed)

    @property
    def num_val_movies(self) -> int:
        return max(1, self.num_movies // 5) if self.val_movies is None else self.val_movies

    @property
    def keyframes(self) -> list[int]:
        return list(range(_KEYFRAME_MARGIN, self.seconds - _KEYFRAME_MARGIN + 1))

    def split_of(self, index: int) -> str:
        return "val" if index >= self.num_movies - self.num_val_movies else "train"

    def video_id(self, index: int) -> str:
        return f"demo{self.seed}_{index:04d}"


@dataclass(frozen=True)
class _Actor:
    person_id: int
    shape: str
    colour: np.ndarray
    pose: str
    turn: str | None
    size: str | None
    y: float
    x_start: float
    x_speed: float  # pixels per second
    angle_start: float
    turn_speed: float  # radians per second, > 0 clockwise on screen
    radius_mid: float
    size_ratio: float  # radius at the end / at the start
    reach: float  # the farthest the shape gets from its centre over the movie, pixels

    def at(self, times: np.ndarray, seconds: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """Centre x, centre y, angle and radius at `times` (seconds)."""
        radius = self.radius_mid * self.size_ratio ** ((times - seconds / 2) / seconds)
        return self.x_start + self.x_speed * times, self.y, self.angle_start + self.turn_speed * times, radius

    def actions(self, others: list[_Actor], time: float) -> list[int]:
        """Action ids at `time`: its own motions, and walk toward when another actor lies ahead of a walker."""
        names = [self.pose, self.turn, self.size]
        if self.x_speed != 0:
            x = self.x_start + self.x_speed * time
            ahead = [
                other for other in others if np.sign(other.x_start + other.x_speed * time - x) == np.sign(self.x_speed)
            ]
            names.append(_WALK_TOWARD if ahead else None)
        return sorted(_ACTION_ID[name] for name in names if name is not None)


def _pick(rng: np.random.Generator, weights: dict):
    choices = list(weights)
    return choices[int(rng.choice(len(choices), p=list(weights.values())))]


def _draw_actor(rng: np.random.Generator, person_id: int, spec: DemoAvaSpec) -> _Actor:
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    pose, turn, size = _pick(rng, _POSES), _pick(rng, _TURNS), _pick(rng, _SIZES)
    radius_mid = rng.uniform(*_RADIUS) * min(spec.width, spec.height)
    ratio = rng.uniform(*_SIZE_RATIO)
    size_ratio = {None: 1.0, "grow": ratio, "shrink": 1 / ratio}[size]
    reach = radius_mid * np.sqrt(max(size_ratio, 1 / size_ratio)) * _REACH[shape]
    margin = reach + 1
    room = spec.width - 2 * margin
    if pose == "stand":
        x_start, x_speed = rng.uniform(margin, spec.width - margin), 0.0
    else:
        travel = rng.uniform(*_TRAVEL) * room
        start = rng.uniform(margin, spec.width - margin - travel)
        x_speed = travel / spec.seconds if pose == "walk right" else -travel / spec.seconds
        x_start = start if pose == "walk right" else start + travel
    turn_speed = {None: 0.0, "turn clockwise": 1.0, "turn counterclockwise": -1.0}[turn] * rng.uniform(*_TURN_SPEED)
    return _Actor(
        person_id=person_id,
        shape=shape,
        colour=vivid_colour(rng, _BRIGHTEST),
        pose=pose,
        turn=turn,
        size=size,
        y=rng.uniform(margin, spec.height - margin),
        x_start=x_start,
        x_speed=x_speed,
        angle_start=rng.uniform(0, 2 * np.pi),
        turn_speed=turn_speed,
        radius_mid=radius_mid,
        size_ratio=size_ratio,
        reach=reach,
    )


def _apart(actors: list[_Actor], seconds: int) -> bool:
    """No two actors pass each other horizontally, and their centres stay half their reaches apart in x (x moves
    linearly, so the first and last frames decide)."""
    for i, first in enumerate(actors):
        for second in actors[i + 1 :]:
            gap = [first.x_start + first.x_speed * t - second.x_start - second.x_speed * t for t in (0, seconds)]
            if gap[0] * gap[1] <= 0 or min(abs(g) for g in gap) < (first.reach + second.reach) / 2:
                return False
    return True


def _cast(rng: np.random.Generator, spec: DemoAvaSpec) -> list[_Actor]:
    count = _pick(rng, _ACTOR_COUNTS)
    while True:  # one actor is always apart, so this ends
        for _ in range(_CASTING_ATTEMPTS):
            actors = [_draw_actor(rng, person, spec) for person in range(count)]
            if _apart(actors, spec.seconds):
                return actors
        count -= 1


@dataclass(frozen=True)
class _Movie:
    index: int
    video_id: str
    actors: list[_Actor]
    backdrop: np.ndarray  # H×W×3 uint8


def _make_movie(spec: DemoAvaSpec, index: int) -> _Movie:
    rng = np.random.default_rng([spec.seed, index])
    backdrop = (_BACKGROUND_SCALE * background(rng, spec.height, spec.width)).astype(np.uint8)
    return _Movie(index=index, video_id=spec.video_id(index), actors=_cast(rng, spec), backdrop=backdrop)


def _grid(spec: DemoAvaSpec) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.arange(spec.width, dtype=np.float64)[None, None, :],
        np.arange(spec.height, dtype=np.float64)[None, :, None],
    )


def _frames(movie: _Movie, spec: DemoAvaSpec) -> Iterator[np.ndarray]:
    """The movie's H×W×3 uint8 frames, drawn a chunk of frames at a time, each actor only over the pixels it can
    reach in the chunk; nearer (lower) actors drawn last."""
    xx, yy = _grid(spec)
    num_frames = spec.seconds * spec.fps
    for first in range(0, num_frames, _FRAMES_PER_CHUNK):
        times = np.arange(first, min(first + _FRAMES_PER_CHUNK, num_frames)) / spec.fps
        canvas = np.repeat(movie.backdrop[None], len(times), axis=0)
        for actor in sorted(movie.actors, key=lambda a: a.y):
            x, y, angle, radius = actor.at(times, spec.seconds)
            columns = slice(max(0, int(x.min() - actor.reach) - 1), int(x.max() + actor.reach) + 2)
            rows = slice(max(0, int(y - actor.reach) - 1), int(y + actor.reach) + 2)
            near_x, near_y = xx[..., columns], yy[:, rows]
            inside = shape_mask(actor.shape, near_x, near_y, x, y, angle, radius)
            along, _ = local_coordinates(near_x, near_y, x[:, None, None], y, angle[:, None, None])
            stripe = np.floor(along / (_STRIPE_PERIOD * radius[:, None, None])) % 2
            shade = np.where(stripe == 0, 1.0, _STRIPE_SHADE)
            window = canvas[:, rows, columns]
            window[...] = np.where(inside[..., None], (actor.colour * shade[..., None]).astype(np.uint8), window)
        yield from canvas


def _boxes(movie: _Movie, spec: DemoAvaSpec) -> dict[int, np.ndarray]:
    """Person id -> K×4 normalised tight boxes (x1, y1, x2, y2) of its pixels at the keyframes."""
    xx, yy = _grid(spec)
    times = np.asarray(spec.keyframes, dtype=np.float64)  # frame timestamp × fps, drawn at exactly this time
    boxes = {}
    for actor in movie.actors:
        mask = shape_mask(actor.shape, xx, yy, *actor.at(times, spec.seconds))
        columns, rows = mask.any(axis=1), mask.any(axis=2)
        x1, y1 = columns.argmax(axis=1), rows.argmax(axis=1)
        x2, y2 = spec.width - columns[:, ::-1].argmax(axis=1), spec.height - rows[:, ::-1].argmax(axis=1)
        boxes[actor.person_id] = np.stack(
            [x1 / spec.width, y1 / spec.height, x2 / spec.width, y2 / spec.height], axis=1
        )
    return boxes


def _box_text(box) -> str:
    return ",".join(f"{v:.3f}" for v in box)  # AVA's CSVs give 3 decimals


def _detected_box(rng: np.random.Generator, box: np.ndarray) -> list[float]:
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    x1, y1, x2, y2 = np.clip(box + rng.normal(0.0, _JITTER, 4) * size, 0.0, 1.0)
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _false_box(rng: np.random.Generator) -> list[float]:
    """A box of about an actor's size anywhere in the frame."""
    width, height = rng.uniform(0.1, 0.3), rng.uniform(0.15, 0.4)
    x1, y1 = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    return [x1, y1, x1 + width, y1 + height]


@dataclass
class _SplitRows:
    annotations: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    detections: list[str] = field(default_factory=list)
    movies: int = 0
    keyframes: int = 0  # annotated (excluded ones left out)
    boxes: int = 0


def _annotate(movie: _Movie, spec: DemoAvaSpec, rows: _SplitRows) -> None:
    """Ground truth, exclusions and detections of one movie, appended to its split's rows."""
    rng = np.random.default_rng([spec.seed, movie.index, 1])
    keyframes = spec.keyframes
    excluded = keyframes[int(rng.integers(len(keyframes)))] if rows.movies % _EXCLUDE_EVERY == 0 else None
    rows.movies += 1
    boxes = _boxes(movie, spec)
    for k, second in enumerate(keyframes):
        where = f"{movie.video_id},{second:04d}"
        if second == excluded:
            rows.excluded.append(where)
        else:
            rows.keyframes += 1
            rows.boxes += len(movie.actors)
        found = []
        for actor in movie.actors:
            box = boxes[actor.person_id][k]
            if second != excluded:
                others = [other for other in movie.actors if other is not actor]
                rows.annotations.extend(
                    f"{where},{_box_text(box)},{action},{actor.person_id}" for action in actor.actions(others, second)
                )
            chance = rng.random()
            if chance >= _MISSED:
                score = rng.uniform(*(_WEAK_SCORES if chance < _MISSED + _WEAK else _HIT_SCORES))
                found.append((_detected_box(rng, box), score))
        if rng.random() < _LOW_FALSE:
            found.append((_false_box(rng), rng.uniform(*_LOW_FALSE_SCORES)))
        if rng.random() < _HIGH_FALSE:
            found.append((_false_box(rng), rng.uniform(*_HIGH_FALSE_SCORES)))
        rows.detections.extend(f"{where},{_box_text(box)},,{score:.3f}" for box, score in found)


def _action_lists() -> dict[str, str]:
    full = "".join(f'label {{\n  name: "{a.name}"\n  label_id: {a.id}\n  label_type: {a.group}\n}}\n' for a in ACTIONS)
    # The official subset has no label_type: the evaluator then groups by AVA's id ranges, which the demo's ids do
    # not follow, so its subset states each action's group.
    evaluated = "".join(
        f'item {{\n  name: "{a.name}"\n  id: {a.id}\n  label_type: {a.group}\n}}\n' for a in ACTIONS if a.evaluated
    )
    return {FULL_ACTION_LIST: full, EVALUATED_ACTION_LIST: evaluated}


@dataclass(frozen=True)
class DemoAvaSummary:
    movies: dict[str, int]  # split -> movies
    keyframes: dict[str, int]  # split -> annotated keyframes (excluded ones left out)
    boxes: dict[str, int]  # split -> ground-truth boxes
    excluded: dict[str, int]  # split -> excluded keyframes
    detections: dict[str, int]  # split -> detection rows


def _lines(rows: list[str]) -> bytes:
    return "".join(row + "\n" for row in rows).encode()


def write_demo_ava(spec: DemoAvaSpec, out: Path) -> DemoAvaSummary:
    """Write the dataset under `out` (created if needed; files of an earlier run with the same spec are rewritten
    identically). A movies folder holding movies this spec does not make is refused: pick an empty `out`."""
    movies_dir = out / "movies"
    wanted = {spec.video_id(index) + ".mp4" for index in range(spec.num_movies)}
    strays = sorted(p.name for p in movies_dir.glob("*.mp4") if p.name not in wanted) if movies_dir.is_dir() else []
    if strays:
        raise FileExistsError(
            f"{movies_dir} holds movies this dataset does not make ({strays[0]}, {len(strays)} in "
            f"all): write it to an empty --out"
        )
    movies_dir.mkdir(parents=True, exist_ok=True)
    rows = {split: _SplitRows() for split in SPLITS}
    for index in range(spec.num_movies):
        movie = _make_movie(spec, index)
        _annotate(movie, spec, rows[spec.split_of(index)])
        data, _ = encode_rgb_frames(_frames(movie, spec), spec.fps)
        write_atomic(movies_dir / f"{movie.video_id}.mp4", data)
    for name, text in _action_lists().items():
        write_atomic(out / name, text.encode())
    write_atomic(out / INCLUDED_TIMESTAMPS, _lines([f"{second:04d}" for second in spec.keyframes]))
    for split in SPLITS:
        write_atomic(out / annotations_file(split), _lines(rows[split].annotations))
        write_atomic(out / excluded_file(split), _lines(rows[split].excluded))
        write_atomic(out / detections_file(split), _lines(rows[split].detections))
    return DemoAvaSummary(
        movies={s: rows[s].movies for s in SPLITS},
        keyframes={s: rows[s].keyframes for s in SPLITS},
        boxes={s: rows[s].boxes for s in SPLITS},
        excluded={s: len(rows[s].excluded) for s in SPLITS},
        detections={s: len(rows[s].detections) for s in SPLITS},
    )
