"""The body-colour vocabulary: what the generator paints and the names the colour classifier answers with.

Sharing the label set is not sharing ground truth: the classifier gets pixels, never which colour was painted."""

from __future__ import annotations

# BGR, as OpenCV draws. Chosen to be nameable by a person, not to be easy: silver sits near asphalt in lightness.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (38, 36, 196),
    "orange": (28, 128, 238),
    "yellow": (40, 206, 232),
    "green": (62, 148, 44),
    "blue": (176, 88, 28),
    "white": (238, 238, 236),
    "silver": (178, 176, 172),
    "black": (32, 30, 30),
}
NAMES: list[str] = list(PALETTE)
CHROMATIC: list[str] = ["red", "orange", "yellow", "green", "blue"]
ACHROMATIC: list[str] = ["black", "silver", "white"]
