"""The table of task kinds: task modules register into it, `load_task` looks kinds up in it.

Keyed by task name, like ``aptune.arch``'s table of architectures: ``aptune.tasks.base`` never imports
a task module, so there is no import cycle, and a task defined outside aptune is one class and one
decorator away::

    @register_task
    class MyTask(Task):
        kind = "my-task"
        ...

    load_task("my-task", tokenizer, train_file="data.jsonl")
"""

from __future__ import annotations

from aptune.errors import ConfigError
from aptune.tasks.spec import Task

__all__ = ["get_task", "normalise_kind", "register_task", "registered_kinds", "unregister_task"]

_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def _key(kind: str) -> str:
    return str(kind).strip().lower().replace("_", "-")


def register_task(task_class: type[Task]) -> type[Task]:
    """Register a :class:`~aptune.tasks.spec.Task` subclass under its ``kind`` and ``aliases``.

    Usable as a class decorator; returns the class unchanged.

    Args:
        task_class: The task class (instantiated once, without arguments).

    Returns:
        ``task_class``.

    Raises:
        ValueError: If it has no ``kind``, or its kind or an alias is taken by another task.
    """
    kind = _key(task_class.kind)
    if not kind:
        raise ValueError(f"{task_class.__name__} has no `kind`; set the name load_task dispatches on.")
    for name in (kind, *map(_key, task_class.aliases)):
        owner = _TASKS.get(name) or _TASKS.get(_ALIASES.get(name, ""))
        if owner is not None and type(owner) is not task_class:
            raise ValueError(
                f"Task kind {name!r} is already registered by {type(owner).__name__}; choose another name "
                "or unregister_task() it first."
            )
    _TASKS[kind] = task_class()
    for alias in task_class.aliases:
        _ALIASES[_key(alias)] = kind
    return task_class


def unregister_task(kind: str) -> None:
    """Remove a registered kind and its aliases (for tests and for replacing a task).

    Args:
        kind: The registered kind.
    """
    kind = _key(kind)
    _TASKS.pop(kind, None)
    for alias in [alias for alias, target in _ALIASES.items() if target == kind]:
        del _ALIASES[alias]


def registered_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_TASKS)


def normalise_kind(kind: str) -> str:
    """Resolve a spelling (case, ``_`` for ``-``, aliases such as ``"summarization"``) to a kind.

    Args:
        kind: What the user typed.

    Returns:
        The registered kind.

    Raises:
        ConfigError: If no task is registered under that name.
    """
    key = _key(kind)
    key = _ALIASES.get(key, key)
    if key not in _TASKS:
        raise ConfigError(f"Unknown task kind {kind!r}. Choose one of {list(_TASKS)}.")
    return key


def get_task(kind: str) -> Task:
    """The registered task of ``kind`` (any spelling :func:`normalise_kind` accepts).

    Args:
        kind: The task kind.

    Returns:
        The task object.

    Raises:
        ConfigError: If no task is registered under that name.
    """
    return _TASKS[normalise_kind(kind)]
