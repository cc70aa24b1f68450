"""The registries that make every stage, head, dataset, transform and metric buildable by name.

Each registry documents the contract of what it holds. Objects are registered with a plain
decorator and built from config dicts whose ``type`` names them::

    from defectkit.registry import STAGES

    @STAGES.register_module()
    class MyStage(Stage):
        ...

    stage = build(STAGES, dict(type="MyStage", threshold=0.5))

An unknown ``type`` fails with the list of valid names.

Names are looked up only among what is registered (in these registries and in the child registries
plugins attach to them, as ``<scope>.<Name>``). mmengine's ``Registry.get`` would instead import any
dotted path it does not know (``os.system``), so :func:`build` never hands it a name: a config or a
weight manifest that names something unregistered is refused before anything is imported.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import weakref
from typing import Any

from mmengine.registry import Registry

from defectkit.errors import ConfigError

SCOPE = "defectkit"

DATASETS = Registry("dataset", scope=SCOPE, locations=["defectkit.data"])
"""Dataset readers. Contract: a class whose ``records(split=None) -> list[Record]`` returns every
labelled image of a data root as :class:`defectkit.sample.Record` objects (paths and ground truth,
no pixels), raising :class:`defectkit.errors.DataError` that names the expected layout when the
root does not match."""

STAGES = Registry("stage", scope=SCOPE, locations=["defectkit.stages"])
"""Pipeline stages. Contract: a :class:`defectkit.stages.base.Stage` whose ``predict(samples)``
fills its fields on a batch of :class:`defectkit.sample.Sample`; trainable stages also implement
``fit(train, val, context)`` and persist themselves with ``save(dir)``/``load(dir)`` as safetensors
plus a JSON manifest."""

HEADS = Registry("head", scope=SCOPE, locations=["defectkit.heads"])
"""Networks inside stages. Contract: an ``nn.Module`` (or a small wrapper around one) built from
keyword arguments, with no weights downloaded at construction."""

TRANSFORMS = Registry("transform", scope=SCOPE, locations=["defectkit.data"])
"""Image transforms and augmentations. Contract: a callable ``(image, mask=None) -> (image, mask)``
on HxWx3 uint8 RGB arrays and optional HxW or CxHxW masks."""

METRICS = Registry("metric", scope=SCOPE, locations=["defectkit.evaluation"])
"""Evaluation metrics. Contract: a class with ``update(eval_record)`` per evaluated image (the small
JSON record :func:`defectkit.evaluation.records.make_eval_record` writes)
and ``compute() -> dict[str, float]`` returning flat keys (``image_auroc``, ``iou.scratch``...)."""

ALL_REGISTRIES = {
    "datasets": DATASETS,
    "stages": STAGES,
    "heads": HEADS,
    "transforms": TRANSFORMS,
    "metrics": METRICS,
}


def registered_names(registry: Registry) -> list[str]:
    """Names registered in ``registry`` and (as ``<scope>.<Name>``) in its child registries, sorted."""
    _import_locations(registry)
    names = list(registry.module_dict)
    for scope, child in registry._children.items():
        names.extend(f"{scope}.{name}" for name in registered_names(child))
    return sorted(names)


def lookup(registry: Registry, type_name: Any) -> Any | None:
    """The object registered under ``type_name``, or None; nothing is ever imported to find it.

    A plain name is looked up in ``registry`` itself, ``<scope>.<Name>`` in the child registry of
    that scope (plugins register there). Unlike ``Registry.get``, a dotted name that is not a child
    scope is not treated as a module path. A non-string ``type`` (a class given by Python code) is
    accepted only if it is itself registered.

    Example:
        >>> lookup(STAGES, "MaskPolicy").__name__
        'MaskPolicy'
        >>> lookup(STAGES, "os.system") is None
        True
    """
    _import_locations(registry)
    if not isinstance(type_name, str):
        registered = _registered_objects(registry)
        return type_name if any(obj is type_name for obj in registered) else None
    found = registry._module_dict.get(type_name)
    if found is not None:
        return found
    scope, dot, rest = type_name.partition(".")
    child = registry._children.get(scope) if dot else None
    return lookup(child, rest) if child is not None else None


def _registered_objects(registry: Registry) -> list[Any]:
    objects = list(registry._module_dict.values())
    for child in registry._children.values():
        _import_locations(child)
        objects.extend(_registered_objects(child))
    return objects


# The registries whose location modules are imported. Weak, and by object rather than id(): the id
# of a registry that was garbage-collected is reused by new objects, and a new registry then passed
# for imported (seen as a test that listed nothing, depending on which tests ran before it).
_SUBMODULES_IMPORTED: weakref.WeakSet[Registry] = weakref.WeakSet()


def _import_locations(registry: Registry) -> None:
    # mmengine imports ``locations`` lazily on first get(); listing names needs the same.
    registry.import_from_location()
    # A location is a package whose modules register themselves on import (one module per stage,
    # metric, format...); mmengine imports only the package itself, so import its modules too.
    if registry in _SUBMODULES_IMPORTED:
        return
    # trusted-ok: locations are set in code by defectkit's registries (and installed plugins, which are
    # trusted code); config and manifest names never reach this import (see lookup()).
    for location in registry._locations:
        package = importlib.import_module(location)  # trusted-ok: a location set in code (see above)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not module.name.startswith("_"):
                importlib.import_module(f"{location}.{module.name}")  # trusted-ok: a module of that package
    _SUBMODULES_IMPORTED.add(registry)


def build(registry: Registry, cfg: dict[str, Any] | Any, **defaults: Any) -> Any:
    """Build the object a config dict names, with errors that list what is valid.

    Args:
        registry: Where to look the ``type`` up.
        cfg: A dict (or mmengine ConfigDict) with a ``type`` key and constructor arguments.
        **defaults: Arguments used when ``cfg`` does not set them.

    Returns:
        The constructed object.

    Raises:
        ConfigError: Unknown ``type``, an argument the constructor does not accept, or a value it
            refuses (:class:`defectkit.validation.ConfigValueError` names the option).

    Example:
        >>> from defectkit.registry import STAGES, build
        >>> stage = build(STAGES, dict(type="MaskPolicy", rules=dict(defect=dict(threshold=0.5))))
    """
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"a {registry.name} config must be a dict with a 'type' key, got {cfg!r}")
    args = dict(cfg)
    type_name = args.pop("type")
    obj_cls = lookup(registry, type_name)
    if obj_cls is None:
        names = registered_names(registry)
        close = difflib.get_close_matches(str(type_name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        # Say why a module path is not imported: it is a refusal, not a missing install.
        dotted = " (names are looked up only among registered ones; module paths are never imported)" if "." in str(type_name) else ""
        raise ConfigError(
            f"unknown {registry.name} type {type_name!r}{dotted}.{hint} Valid {registry.name} types: {', '.join(names)}"
        )
    for key, value in defaults.items():
        args.setdefault(key, value)
    _check_arguments(registry.name, obj_cls, args)
    # Option values are checked against the constructor's type hints, and its ValueError/TypeError
    # becomes a one-line ConfigError (defectkit.validation), so a bad value never ends in a traceback.
    from defectkit.validation import construct

    return construct(registry.name, obj_cls, args)


def _check_arguments(kind: str, obj_cls: type, args: dict[str, Any]) -> None:
    target = obj_cls.__init__ if inspect.isclass(obj_cls) else obj_cls
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ConfigError(
            f"{kind} {obj_cls.__name__} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
