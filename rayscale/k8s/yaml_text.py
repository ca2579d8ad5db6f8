"""Manifests as YAML text: the order they were built in, readable multi-line strings."""

from __future__ import annotations

from typing import Any

__all__ = ["dump_yaml"]


def dump_yaml(obj: Any) -> str:
    """YAML in the order the objects were built, multi-line strings as readable ``|`` blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a manifest reads top to bottom, no &anchors
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
