"""Therapy session settings (`TherapyConfig`), the robot's phrases and the card words.

Every field of `TherapyConfig` is a therapy_node parameter of the same name; the phrases are the
parameters `phrases.<key>` (English defaults below) and `emotion_words.<label>`, so a therapist
can translate what the robot says in the YAML config. A phrase is checked when it is set: only
its own placeholders, no format specifications and bounded length, so a configured text can
neither reach into Python objects nor grow without bound when it is filled in.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from dataclasses import dataclass, field
from typing import Optional, Sequence

from fer_ros import LABELS

STAGES = ("idle", "introduction", "teaching", "practice", "done")
VERBS = ("start", "pause", "resume", "skip", "stop")
MAX_PHRASE_CHARS = 300
MAX_NAME_CHARS = 40
MAX_TEXT_CHARS = 64  # answers and commands from topics are logged and echoed at most this long
_BRACES = re.compile(r"[{}]")

#: Card words accepted besides the labels themselves (tablets and card readers vary).
ANSWER_ALIASES = {
    "anger": "angry", "mad": "angry", "disgusted": "disgust", "scared": "fear", "afraid": "fear",
    "fearful": "fear", "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise",
    "calm": "neutral",
}

#: What the robot says, in English: the defaults of the `phrases.<key>` settings, which a therapist
#: can translate. Only the placeholders of `PLACEHOLDERS[key]` may appear in a phrase.
DEFAULT_PHRASES = {
    "greet": "Hello{name}! I am so happy to see you. Let's play together!",
    "teaching_intro": "Now let's learn about feelings.",
    "teach_prompt": "This is {emotion}. Can you make a {emotion} face, like me?",
    "teach_retry": "Let's try again. Can you show me {emotion}?",
    "teach_success": "Great job! That is a {emotion} face!",
    "teach_timeout": "Good try! Let's try another one.",
    "practice_intro": "Now it's your turn to guess how I feel.",
    "practice_prompt_card": "How do I feel? Show me the card.",
    "practice_prompt_imitation": "How do I feel? Make the same face as me.",
    "practice_right": "Yes! I am {emotion}. Well done!",
    "practice_wrong": "Good try! I am {emotion}.",
    "practice_timeout": "That's okay. I was feeling {emotion}. Let's try another one.",
    "face_lost": "Where did you go? Come back and play with me!",
    "distress": "Let's take a little break.",
    "resume": "Let's keep playing!",
    "goodbye": "All done! You got {correct} out of {attempted}. Thank you for playing with me!",
    "stopped": "Let's stop here. Thank you for playing with me!",
}



#: Placeholders each phrase may use.
PLACEHOLDERS = {key: {"name"} | ({"emotion"} if "{emotion}" in text else set())
                | ({"correct", "attempted"} if key == "goodbye" else set())
                for key, text in DEFAULT_PHRASES.items()}


def check_phrase(key: str, text: str) -> None:
    """Raise ValueError unless `text` is a usable phrase for `key`."""
    if key not in DEFAULT_PHRASES:
        raise ValueError(f"unknown phrase {key!r} (known: {', '.join(DEFAULT_PHRASES)})")
    if not text.strip() or len(text) > MAX_PHRASE_CHARS:
        raise ValueError(f"phrases.{key} must have 1-{MAX_PHRASE_CHARS} characters")
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"phrases.{key}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS[key] or spec or conversion:
            raise ValueError(f"phrases.{key}: placeholder {{{name}}} not allowed; this phrase may use "
                             f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS[key]))}")


@dataclass
class TherapyConfig:
    """Session settings; every field is a therapy_node parameter of the same name."""

    emotions: list = field(default_factory=lambda: ["happy", "sad", "angry", "surprise"])
    teaching_trials_per_emotion: int = 1
    practice_trials_per_emotion: int = 2
    order: str = "fixed"  # fixed | shuffled
    seed: int = 0  # shuffled order seed; -1 = different every session (the seed used is logged)
    intro_seconds: float = 60.0
    teaching_timeout: float = 20.0
    teaching_attempts: int = 2
    practice_timeout: float = 20.0
    feedback_seconds: float = 4.0
    confidence_threshold: float = 0.5
    hold_seconds: float = 1.0
    child_selection: str = "largest"  # largest | central | face_id
    child_face_id: int = 0
    child_reselect_seconds: float = 1.0
    practice_answer_mode: str = "card"  # card | imitation
    distress_labels: list = field(default_factory=lambda: ["angry", "fear", "sad"])
    distress_threshold: float = 0.7
    distress_seconds: float = 5.0
    face_lost_seconds: float = 10.0
    auto_resume_face: bool = True
    observation_timeout: float = 1.0
    timeline_rate: float = 2.0
    child_name: str = ""
    phrases: dict = field(default_factory=lambda: dict(DEFAULT_PHRASES))  # key -> text (missing keys: English)
    emotion_words: dict = field(default_factory=dict)  # label -> word said for {emotion} (missing: the label)

    @classmethod
    def from_dict(cls, values: dict) -> "TherapyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown therapy setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        values = dict(values)
        values["phrases"] = {**DEFAULT_PHRASES, **dict(values.get("phrases") or {})}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TherapyConfig":
        """Raise ValueError naming the bad setting; normalises label case."""
        self.emotions = [str(e).strip().lower() for e in self.emotions]
        self.distress_labels = [str(e).strip().lower() for e in self.distress_labels]
        bad = [e for e in self.emotions if e not in LABELS]
        if bad or not self.emotions:
            raise ValueError(f"emotions must be a non-empty subset of {LABELS}, got {self.emotions}")
        if len(set(self.emotions)) != len(self.emotions):
            raise ValueError(f"emotions has duplicates: {self.emotions}")
        bad = [e for e in self.distress_labels if e not in LABELS]
        if bad:
            raise ValueError(f"distress_labels must be labels from {LABELS}, got {bad}")
        for name, allowed in (("order", ("fixed", "shuffled")), ("child_selection", ("largest", "central", "face_id")),
                              ("practice_answer_mode", ("card", "imitation"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("teaching_trials_per_emotion", "practice_trials_per_emotion"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if int(self.teaching_attempts) < 1:
            raise ValueError("teaching_attempts must be >= 1")
        for name in ("intro_seconds", "feedback_seconds", "hold_seconds", "child_reselect_seconds",
                     "timeline_rate"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("teaching_timeout", "practice_timeout", "distress_seconds", "face_lost_seconds",
                     "observation_timeout"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("confidence_threshold", "distress_threshold"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.child_selection == "face_id" and int(self.child_face_id) < 1:
            raise ValueError("child_selection 'face_id' needs child_face_id >= 1")
        if len(str(self.child_name)) > MAX_NAME_CHARS or _BRACES.search(str(self.child_name)):
            raise ValueError(f"child_name must have at most {MAX_NAME_CHARS} characters and no braces")
        self.phrases = {**DEFAULT_PHRASES, **{str(k): str(v) for k, v in dict(self.phrases).items()}}
        for key, text in self.phrases.items():
            check_phrase(key, text)
        self.emotion_words = {str(k).strip().lower(): str(v) for k, v in dict(self.emotion_words).items()}
        for label, word in self.emotion_words.items():
            if label not in LABELS:
                raise ValueError(f"emotion_words: {label!r} is not one of {LABELS}")
            if not word.strip() or len(word) > MAX_NAME_CHARS or _BRACES.search(word):
                raise ValueError(f"emotion_words.{label} must be 1-{MAX_NAME_CHARS} characters without braces")
        return self

    def say(self, key: str, **values) -> str:
        """The phrase `key` with its placeholders filled in ({emotion} in the configured words)."""
        if "emotion" in values:
            values["emotion"] = self.emotion_words.get(values["emotion"], values["emotion"])
        return self.phrases[key].format(**values)


def clip_text(text, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out (for logs and replies)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def normalize_answer(text: str) -> Optional[str]:
    """A label from a card word ('Happy', ' surprised ' -> 'happy', 'surprise'), else None."""
    if len(str(text)) > MAX_TEXT_CHARS:
        return None
    word = str(text).strip().lower()
    word = ANSWER_ALIASES.get(word, word)
    return word if word in LABELS else None


def plan_trials(emotions: Sequence[str], per_emotion: int, order: str, rng: random.Random) -> list:
    """Round-robin (fixed) or shuffled list of target emotions for one stage."""
    trials = [e for _ in range(int(per_emotion)) for e in emotions]
    if order == "shuffled":
        rng.shuffle(trials)
    return trials
