"""Checking config values against the options a registered class declares, before it is built.

Every object a config builds (stage, head, reader, transform, metric) goes through
:func:`construct`: each option is checked against the constructor's type hint, and a ``ValueError``
or ``TypeError`` the constructor raises is turned into a :class:`~defectkit.errors.ConfigError`.
Either way the user sees one line naming the option, the value given and what is allowed; the
CLI exits with status 2 on it.

Only plain hints are checked (``int``, ``float``, ``bool``, ``str``, ``None``, unions,
``Literal``, sequences, tuples and mappings of those); anything else is accepted as is, so a
hint the checker does not understand never rejects a working config.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from defectkit.errors import ConfigError


class ConfigValueError(ConfigError):
    """One option of a config has a value its class does not accept.

    Attributes:
        key: The option, as a dotted path once the caller knows where it sits (``pipeline.0.epochs``).
        value: The value given.
        allowed: What the option accepts, in words (``"an int"``, ``"one of 'dark', 'always'"``).
        owner: The class that declares the option (e.g. ``"ZeroDce"``).
    """

    def __init__(self, key: str, value: Any, allowed: str, owner: str = "") -> None:
        self.key, self.value, self.allowed, self.owner = key, value, allowed, owner
        where = f" ({owner})" if owner else ""
        super().__init__(f"{key}={_short_repr(value)}{where}: {allowed}")

    def at(self, prefix: str) -> ConfigValueError:
        """The same error with ``prefix.`` before its key (e.g. ``pipeline.0``)."""
        error = ConfigValueError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed, self.owner)
        error.__cause__ = self.__cause__
        return error


def construct(kind: str, obj_cls: Callable[..., Any], args: dict[str, Any]) -> Any:
    """Check ``args`` against ``obj_cls``'s hints, then build it; bad values become one-line errors.

    Args:
        kind: What is built, for messages (``"stage"``, ``"metric"``...).
        obj_cls: The registered class (or factory function).
        args: Keyword arguments from the config (without ``type``).

    Raises:
        ConfigValueError: A value whose type does not match its option's hint, or that the
            constructor refused with a ``ValueError``/``TypeError`` naming it.
        ConfigError: Any other refusal by the constructor, with its message on one line.

    Example:
        >>> from defectkit.stages.enhance import Gamma
        >>> construct("stage", Gamma, {"target_luma": "bright"})
        Traceback (most recent call last):
        ...
        defectkit.validation.ConfigValueError: target_luma='bright' (Gamma): expected a number
    """
    check_arguments(obj_cls, args)
    name = getattr(obj_cls, "__name__", str(obj_cls))
    try:
        return obj_cls(**args)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        # The constructor's own message usually names the option; point at it when exactly one does.
        named = [key for key in args if key in message]
        if len(named) == 1:
            raise ConfigValueError(named[0], args[named[0]], message, name) from exc
        raise ConfigError(f"{kind} {name}: {message}") from exc


def check_arguments(obj_cls: Callable[..., Any], args: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigValueError` for the first value in ``args`` that its type hint rules out."""
    hints = option_hints(obj_cls)
    name = getattr(obj_cls, "__name__", str(obj_cls))
    for key, value in args.items():
        if key in hints and not matches(value, hints[key]):
            raise ConfigValueError(key, value, f"expected {describe(hints[key])}", name)


def option_hints(obj_cls: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hint of each constructor option (options whose hint cannot be resolved are left out)."""
    target = obj_cls.__init__ if inspect.isclass(obj_cls) else obj_cls
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # a hint naming something only imported for type checkers: check nothing
        return {}
    hints.pop("return", None)
    return hints


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is allowed by ``hint`` (lenient: hints not understood allow anything)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is os.PathLike or origin is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args)))
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence) or hint in (list, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or hint in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            return False
        return len(args) != 2 or all(matches(v, args[1]) for v in value.values())
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return callable(value)
    return True


def describe(hint: Any) -> str:
    """``hint`` in words, e.g. ``"a sequence of int"`` or ``"an int or None"``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is None or hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    words = {bool: "True or False", int: "an int", float: "a number", str: "a string", Any: "anything"}
    if hint in words:
        return words[hint]
    if hint is os.PathLike or origin is os.PathLike:
        return "a path"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a sequence of {_plain(args[0])}"
        return f"a sequence of {len(args)} values ({', '.join(_plain(a) for a in args)})" if args else "a sequence"
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence) or hint in (list, collections.abc.Sequence):
        return f"a sequence of {_plain(args[0])}" if args else "a sequence"
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or hint in (dict, collections.abc.Mapping):
        return "a dict" + (f" of {_plain(args[1])}" if len(args) == 2 and args[1] is not Any else "")
    return getattr(hint, "__name__", str(hint))


def _plain(hint: Any) -> str:
    """``hint`` as the items of a collection: "ints", "numbers", "strings or None"..."""
    plural = {bool: "booleans", int: "ints", float: "numbers", str: "strings", dict: "dicts"}
    if hint in plural:
        return plural[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_plain(arg) if arg is not type(None) else "None" for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (dict, collections.abc.Mapping):
        return "dicts"
    text = describe(hint)
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article) :]
    return text


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["ConfigValueError", "check_arguments", "construct", "describe", "matches", "option_hints"]
