"""Cut the part of Twilio's OpenAPI description the contract tests use, so they run in any clone.

Input: the derived copy `twilio_api_v2010.form-arrays.json` (tests/specs/derived/, made from
twilio/twilio-oai @ d50069b44ea8cd23141385bdb6db48f16ff75bb5 `spec/json/twilio_api_v2010.json`, MIT).
Output: the same document with only PATHS and every component they reference (transitively),
byte-for-byte the vendor's definitions otherwise. Run: python make_subset.py INPUT > OUTPUT
"""

from __future__ import annotations

import json
import sys
from typing import Any

PATHS = (
    "/2010-04-01/Accounts/{Sid}.json",
    "/2010-04-01/Accounts/{AccountSid}/Calls.json",
    "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json",
)


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                found.add(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in spec.items() if k not in ("paths", "components")}
    out["paths"] = {p: spec["paths"][p] for p in PATHS}
    components: dict[str, dict[str, Any]] = {}
    if "securitySchemes" in spec.get("components", {}):
        components["securitySchemes"] = spec["components"]["securitySchemes"]
    todo, done = refs(out["paths"]), set()
    while todo:
        ref = todo.pop()
        done.add(ref)
        _, _, kind, name = ref.split("/", 3)
        value = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = value
        todo |= refs(value) - done
    out["components"] = {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}
    return out


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        json.dump(subset(json.load(handle)), sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
