"""Generate docs/crd-reference.md from the CRD schemas (themselves generated from the models).

    python -m hone_operator.api.docgen            # write docs/crd-reference.md
    python -m hone_operator.api.docgen --check    # exit 1 if it would change
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hone_operator.api import crdgen

HEADER = """# CRD reference

Generated from `operator/hone_operator/api/v1alpha1.py` by
`python -m hone_operator.api.docgen`; a test fails when it is out of date.
`kubectl explain finetunejob.spec` (or `modelserving.spec`, `tokenbudget.spec`) shows the same descriptions.
"""


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = node.get("type")
    if t == "array":
        return f"[]{_type(node.get('items') or {})}"
    if t == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'] or {})}"
    if node.get("enum"):
        return " \\| ".join(f"`{v}`" for v in node["enum"] if v is not None)
    return t or "any"


def _rows(node: dict[str, Any], path: str, out: list[str]) -> None:
    required = set(node.get("required") or [])
    for name, child in (node.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        desc = " ".join((child.get("description") or "").split()).replace("|", "\\|")
        desc = desc.replace("<", "&lt;").replace(">", "&gt;")  # <claim> is text, not an HTML tag
        extra = []
        if name in required:
            extra.append("required")
        if "default" in child:
            extra.append(f"default `{child['default']}`")
        for key, label in (("minimum", "min"), ("maximum", "max"), ("maxLength", "max length")):
            if key in child:
                extra.append(f"{label} {child[key]}")
        note = f" ({', '.join(extra)})" if extra else ""
        out.append(f"| `{field}` | {_type(child)} | {desc}{note} |")
        target = child.get("items") if child.get("type") == "array" else child
        if isinstance(target, dict) and target.get("properties"):
            _rows(target, f"{field}[]" if child.get("type") == "array" else field, out)


def _rules(node: dict[str, Any], path: str, out: list[str]) -> None:
    """The CEL rules (x-kubernetes-validations) under a node, with the field each one guards."""
    for rule in node.get("x-kubernetes-validations") or []:
        field = path + rule.get("fieldPath", "")
        message = rule.get("message") or (
            rule["messageExpression"].split("'")[1].split(" (got")[0] + ", naming those given")
        when = " (an update rule: the API server alone checks it)" if "oldSelf" in rule["rule"] else ""
        out.append(f"| `{field}` | {message}{when} |")
    for name, child in (node.get("properties") or {}).items():
        target = child.get("items") if child.get("type") == "array" else child
        if isinstance(target, dict):
            _rules(target, f"{path}.{name}" + ("[]" if child.get("type") == "array" else ""), out)


def render() -> str:
    parts = [HEADER]
    for crd in (crdgen.finetunejob_crd(), crdgen.modelserving_crd(), crdgen.tokenbudget_crd()):
        kind = crd["spec"]["names"]["kind"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        parts.append(f"\n## {kind} (`{crd['spec']['group']}/{version['name']}`, short name "
                     f"`{crd['spec']['names']['shortNames'][0]}`)\n")
        if schema.get("description"):
            parts.append(" ".join(schema["description"].split()) + "\n")
        for section in ("spec", "status"):
            node = schema["properties"].get(section) or {}
            rows: list[str] = []
            _rows(node, section, rows)
            parts.append(f"\n### `{section}`\n\n| field | type | description |\n|---|---|---|\n" + "\n".join(rows) + "\n")
        rules: list[str] = []
        _rules(schema["properties"]["spec"], "spec", rules)
        if rules:
            parts.append("\n### Validation rules\n\nChecked by the API server when an object is applied (CEL "
                         "`x-kubernetes-validations` in the CRD) and by the operator's models:\n\n| field | refused with |\n"
                         "|---|---|\n" + "\n".join(rules) + "\n")
    return "".join(parts)


def default_path() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "crd-reference.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_path())
    parser.add_argument("--check", action="store_true", help="fail if the file differs instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is out of date (run python -m hone_operator.api.docgen)", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
