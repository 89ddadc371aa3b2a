"""A name -> factory registry, as in detectron2/fast-reid, so configs pick components by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from reid.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to callables. ``@REG.register()`` or ``@REG.register("alias")``.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register()
    ... def triplet(): ...
    >>> LOSSES.get("triplet") is triplet
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            key = (name or obj.__name__).lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        key = name.lower()
        if key not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
