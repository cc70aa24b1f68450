"""The base class of data set readers: root checks, safe path resolution and layout-naming errors."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from defectkit.errors import DataError
from defectkit.sample import Record


class ImageDataset(ABC):
    """A reader that lists the images of a data root as :class:`~defectkit.sample.Record` objects.

    Subclasses set :attr:`LAYOUT` (a small drawing of the folder layout they expect, shown in
    every error about the root) and implement :meth:`records`. Readers never decode pixels; they
    only say where images and their ground truth are.

    Attributes:
        data_root: The folder the reader lists, as given (relative paths stay relative to the
            working directory).
        image_classes: Names of the image-level classes; ``Record.label`` indexes into them.
        problems: Human-readable notes about files the last :meth:`records` call ignored or found
            incomplete (stray files, masks without images...). Each names the file.

    Example:
        >>> class MyReader(ImageDataset):
        ...     LAYOUT = "<root>/\\n  *.png"
        ...     def records(self, split=None):
        ...         root = self.check_root()
        ...         found = [Record(path=str(p), label=0) for p in sorted(root.glob("*.png"))]
        ...         return self.require_records(found)
        >>> MyReader("no/such/folder").records()  # doctest: +SKIP
        Traceback (most recent call last):
        defectkit.errors.DataError: no/such/folder: data root does not exist. MyReader expects: ...
    """

    LAYOUT: ClassVar[str] = "<root>/  (no layout documented)"
    """A short multi-line drawing of the expected folder layout, used in error messages."""

    def __init__(self, data_root: str | os.PathLike[str], image_classes: Sequence[str] = ("normal", "defect")) -> None:
        if data_root is None or str(data_root) == "":
            raise DataError(f"{type(self).__name__} needs a data_root. Expected layout:\n{self._layout_text()}")
        self.data_root = Path(data_root).expanduser()
        self.image_classes = tuple(image_classes)
        if len(self.image_classes) < 1:
            raise DataError(f"{type(self).__name__}: image_classes must name at least one class")
        self.problems: list[str] = []

    @abstractmethod
    def records(self, split: str | None = None) -> list[Record]:
        """Every labelled image of the data root, sorted by path.

        Args:
            split: A split the format itself defines (e.g. ``"test"``); None for all labelled
                images. Readers of formats without predefined splits accept only None.

        Raises:
            DataError: The root is missing or matches nothing; the message draws :attr:`LAYOUT`.
        """

    # -- helpers for subclasses ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The data root as an absolute, normalised path (symlinks kept, see :meth:`resolve`)."""
        return Path(os.path.abspath(self.data_root))

    def layout_error(self, reason: str) -> DataError:
        """A DataError naming the data root, what is wrong and the layout this reader expects.

        Return value is meant to be raised: ``raise self.layout_error("no class folders")``.
        """
        details = self.layout_details()
        return DataError(
            f"{self.data_root}: {reason}. {type(self).__name__} expects this layout"
            f"{' (' + details + ')' if details else ''}:\n{self._layout_text()}"
        )

    def layout_details(self) -> str:
        """The reader's settings that fill in :attr:`LAYOUT` (prefixes, suffixes), for error messages."""
        return ""

    def check_root(self) -> Path:
        """The absolute root, after checking it exists and is a folder.

        Raises:
            DataError: Missing root, or a file where a folder is expected.
        """
        root = self.root
        if not root.exists():
            raise self.layout_error("data root does not exist")
        if not root.is_dir():
            raise self.layout_error("data root is a file, not a folder")
        return root

    def require_records(self, records: Iterable[Record], what: str = "no images found") -> list[Record]:
        """Return ``records`` sorted by path, or raise a layout error when there are none."""
        found = sorted(records, key=lambda r: r.path)
        if not found:
            raise self.layout_error(what)
        return found

    def check_split(self, split: str | None, allowed: Sequence[str] = ()) -> None:
        """Refuse a ``split`` this format does not define.

        Raises:
            DataError: ``split`` is neither None nor one of ``allowed``.
        """
        if split is not None and split not in allowed:
            valid = ", ".join(repr(s) for s in allowed) if allowed else "none (pass split=None)"
            raise DataError(
                f"{type(self).__name__} ({self.data_root}) has no predefined split {split!r}; valid splits: {valid}"
            )

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """Resolve ``path`` (relative to the root, or absolute) to an absolute path inside the root.

        Annotation files name images by path; a path that climbs out of the root (``..``) or points
        elsewhere on disk is almost always a broken or hostile annotation, so it is refused rather
        than read. The check is lexical: symlinks inside the root may point elsewhere, because data
        roots are often assembled from links to a shared store.

        Raises:
            DataError: ``path`` is empty or lies outside the data root.

        Example:
            >>> reader.resolve("train/images/a.png")  # doctest: +SKIP
            PosixPath('/data/root/train/images/a.png')
        """
        text = os.fspath(path)
        if text == "":
            raise DataError(f"{self.data_root}: empty path in annotations")
        root = self.root
        candidate = Path(os.path.normpath(os.path.join(root, text)))
        if candidate != root and root not in candidate.parents:
            raise DataError(
                f"{self.data_root}: path {text!r} points outside the data root ({candidate}); "
                "annotation paths must stay inside the root"
            )
        return candidate

    def _layout_text(self) -> str:
        lines = [line.rstrip() for line in self.LAYOUT.strip("\n").splitlines()]
        return "\n".join("    " + line for line in lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_root={str(self.data_root)!r})"
