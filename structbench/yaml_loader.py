"""YAML read as configs need it: PyYAML's safe loader, except that a key given twice in one
mapping is an error instead of the last one silently winning (a config that names
``tokens`` twice almost always meant something else by one of them)."""
from __future__ import annotations

from typing import Any, Hashable

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # ``<<: *base``: keys given next to it override the merged ones
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself refuses it, with its own message
            if key in first:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"key {key!r} given twice (first on line {first[key]}); give each key once",
                                       key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)
