"""Handler registration: which function runs which job type, checked when registered."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import HandlerDefinitionError

__all__ = [
    "HandlerRegistry",
    "HandlerSpec",
    "default_registry",
    "handler",
    "is_valid_name",
]

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_valid_name(name: object) -> bool:
    """Whether `name` is acceptable to the scheduler as a job type or queue name."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class HandlerSpec:
    """A registered handler and how to call it."""

    type: str
    func: Callable[..., Any]
    is_async: bool
    takes_context: bool


def _is_async_callable(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    # Instances with an async __call__ are handlers too.
    call = getattr(func, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def _positional_arity(type_name: str, func: Callable[..., Any]) -> int:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise HandlerDefinitionError(
            f"handler for {type_name!r}: cannot read the signature of {func!r}: {exc}"
        ) from exc
    positional = 0
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise HandlerDefinitionError(
                f"handler for {type_name!r} takes *{param.name}; declare `(payload)` or "
                "`(payload, ctx)` explicitly"
            )
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
        elif param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is param.empty:
            raise HandlerDefinitionError(
                f"handler for {type_name!r} has a required keyword-only parameter "
                f"{param.name!r}, which the worker cannot fill"
            )
    return positional


def make_spec(type_name: str, func: object) -> HandlerSpec:
    """Checks a handler and describes it; raises HandlerDefinitionError when unusable."""
    if not is_valid_name(type_name):
        raise HandlerDefinitionError(
            f"invalid job type {type_name!r}: use 1-128 characters of [A-Za-z0-9_.:-]"
        )
    if not callable(func):
        raise HandlerDefinitionError(
            f"handler for {type_name!r} must be callable, not {type(func).__name__}"
        )
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise HandlerDefinitionError(
            f"handler for {type_name!r} is a generator function; return the result instead"
        )
    arity = _positional_arity(type_name, func)
    if arity not in (1, 2):
        raise HandlerDefinitionError(
            f"handler for {type_name!r} takes {arity} positional parameters; it must take "
            "`(payload)` or `(payload, ctx)`"
        )
    return HandlerSpec(
        type=type_name,
        func=func,
        is_async=_is_async_callable(func),
        takes_context=arity == 2,
    )


class HandlerRegistry:
    """Job type names mapped to handlers; each type can be registered once."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(self, type_name: str, func: Callable[..., Any]) -> HandlerSpec:
        """Registers `func` for `type_name`; raises HandlerDefinitionError when invalid."""
        spec = make_spec(type_name, func)
        if type_name in self._specs:
            raise HandlerDefinitionError(
                f"job type {type_name!r} already has a handler "
                f"({_describe(self._specs[type_name].func)})"
            )
        self._specs[type_name] = spec
        return spec

    def handler(self, type_name: str) -> Callable[[F], F]:
        """Decorator form of `register`; returns the function unchanged."""
        # Checked here too, so that `@handler(bad_name)` fails before decorating.
        if not is_valid_name(type_name):
            raise HandlerDefinitionError(
                f"invalid job type {type_name!r}: use 1-128 characters of [A-Za-z0-9_.:-]"
            )

        def decorate(func: F) -> F:
            self.register(type_name, func)
            return func

        return decorate

    def include(self, other: HandlerRegistry) -> None:
        """Adds every handler of `other`; none is added if any type is already taken."""
        clashes = sorted(set(self._specs) & set(other._specs))
        if clashes:
            raise HandlerDefinitionError(f"job types registered twice: {', '.join(clashes)}")
        self._specs.update(other._specs)

    def get(self, type_name: str) -> HandlerSpec | None:
        return self._specs.get(type_name)

    @property
    def types(self) -> tuple[str, ...]:
        """Registered job types, in registration order."""
        return tuple(self._specs)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._specs

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(tuple(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)


def _describe(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{name}"


default_registry = HandlerRegistry()
"""Where module-level `@jobwire.worker.handler(...)` registers; `jobwire worker`
runs every handler found here after importing the modules given with --import."""


def handler(type_name: str) -> Callable[[F], F]:
    """Registers a function in the default registry, like a Celery or RQ task::

        from jobwire.worker import handler

        @handler("resize")
        async def resize(payload, ctx): ...

    Run it with `jobwire worker --import mymodule`, or include `default_registry`
    in a Worker with `Worker.include(default_registry)`.
    """
    return default_registry.handler(type_name)
