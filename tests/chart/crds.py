"""Validate custom resources against the OpenAPI schemas of their CustomResourceDefinitions.

The CRDs are upstream files kept in the steering repository's `shared/crds` folder, found at
`../shared/crds` from the repository root or at $BAILU_CRDS_DIR. The API server prunes unknown
fields of a custom resource silently; here they are errors, as `kubectl apply --validate=strict`
would make them, so that a misspelt field cannot go unnoticed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]

# (group, version, kind) of a resource.
GVK = tuple[str, str, str]


def crds_dir() -> Path:
    return Path(os.environ.get("BAILU_CRDS_DIR") or REPO.parent / "shared" / "crds")


def gvk(resource: dict[str, Any]) -> GVK:
    group, _, version = str(resource["apiVersion"]).rpartition("/")
    return group, version, str(resource["kind"])


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden wherever the CRD lists the fields, and `nullable` honoured."""

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: visit(value) for key, value in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        return node

    strict = visit(copy.deepcopy(schema))
    # apiVersion, kind and metadata are validated by the API server, not by the CRD's schema.
    for field in ("apiVersion", "kind", "metadata"):
        strict.setdefault("properties", {}).setdefault(field, {})
    return strict


@dataclass
class CrdIndex:
    """The schema of every served version of every CRD in a folder."""

    schemas: dict[GVK, dict[str, Any]]
    files: dict[GVK, str]

    @classmethod
    def load(cls, folder: Path) -> CrdIndex:
        schemas: dict[GVK, dict[str, Any]] = {}
        files: dict[GVK, str] = {}
        for path in sorted(folder.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schemas[key] = strict_schema(version["schema"]["openAPIV3Schema"])
                    files[key] = path.name
        return cls(schemas, files)

    def has(self, resource: dict[str, Any]) -> bool:
        return gvk(resource) in self.schemas

    def errors(self, resource: dict[str, Any]) -> list[str]:
        """Why the resource does not validate against its CRD (empty if it does); KeyError without a CRD."""
        schema = self.schemas[gvk(resource)]
        validator = jsonschema.Draft7Validator(schema)
        return sorted(
            f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in validator.iter_errors(resource)
        )
