"""Extract one version's ``openAPIV3Schema`` from a KubeRay CRD, unchanged, as JSON.

The whole CRDs are 2.3 MB of YAML (two versions each, deep indentation); the v1 schema is what
the recipes are checked against, so only it is kept. Run from a KubeRay checkout::

    git show v1.7.0:ray-operator/config/crd/bases/ray.io_rayclusters.yaml \
      | python cluster/schemas/extract.py > cluster/schemas/raycluster.v1.json
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml


def openapi_schema(crd: dict, version: str) -> dict:
    """The named served version's schema (the one ``kubectl apply`` is checked against)."""
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return found["schema"]["openAPIV3Schema"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v1")
    args = parser.parse_args()
    schema = openapi_schema(yaml.safe_load(sys.stdin), args.version)
    # One key per line, no indentation: small, and a KubeRay upgrade reads as a line diff.
    json.dump(schema, sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
