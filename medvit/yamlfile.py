"""Reading YAML that came from somewhere else (pipelines, fragments, cards, packages, MLmodel files), bounded.

``yaml.safe_load`` builds no Python objects, but a small file can still exhaust memory or the stack: nested
aliases ("billion laughs") multiply when the result is copied or walked, and thousands of nested brackets
overflow the composer's recursion. :func:`read_yaml` refuses, in one line naming the file: anything that is
not a regular file, files above :data:`MAX_BYTES`, text that is not UTF-8, more than :data:`MAX_ALIASES` alias
references, and nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medvit.errors import ConfigError, one_line

MAX_BYTES = 1 << 20  # 1 MiB: the largest shipped YAML is a few KB
MAX_ALIASES = 64
MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that counts alias references and nesting while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} alias references (*name)")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    pass


def read_yaml(path: str | Path, *, error: type[Exception] = ConfigError) -> Any:
    """The YAML document in ``path``, read within the bounds above.

    Raises:
        ``error`` (ConfigError by default): Missing, not a regular file, too large, not UTF-8, not valid YAML,
            too many aliases or too deep (one line naming the file).
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if not path.is_file():
        raise error(f"{path}: not a regular file (a folder, device or pipe); refusing to read it")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise error(f"{path}: {size} bytes is too large for a YAML file (limit {MAX_BYTES})")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise error(f"{path}: too large for a YAML file (limit {MAX_BYTES} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise error(f"{path}: {exc}; refusing it") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({one_line(exc, 200)})") from None
    except RecursionError:
        raise error(f"{path}: nested too deep") from None
    finally:
        loader.dispose()
