"""The configuration reference (docs/configuration.md), generated from :class:`~zombieguard.Policy`
and :class:`~zombieguard.Settings`: their fields, defaults and attribute docstrings are the one
source. ``python -m tools.reference > docs/configuration.md`` regenerates it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap

from zombieguard import policy
from zombieguard.policy import ENV_PREFIX, Policy, Settings

HEADER = """# Configuration reference

Generated from `zombieguard.Policy` and `zombieguard.Settings` by `python -m tools.reference`;
do not edit by hand. Durations are in seconds. Which values to choose, and the recovery times they
give: [recommended.md](recommended.md).
"""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal after it in the class body)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _table(cls: type) -> str:
    docs = field_docs(cls)
    rows = ["| Key | Default | Environment | Meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = "None" if f.default is None else repr(f.default)
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        rows.append(f"| `{f.name}` | `{default}` | {env} | {docs.get(f.name, '').replace('|', '/')} |")
    return "\n".join(rows)


def render() -> str:
    """The whole page."""
    sources = textwrap.dedent((policy.__doc__ or "").partition("Sources, later overriding earlier:")[2])
    parts = [
        HEADER,
        f"Sources, later overriding earlier:\n\n{sources.strip()}",
        f"## Policy (per job)\n\n{inspect.cleandoc(Policy.__doc__ or '')}\n\n{_table(Policy)}",
        f"## Settings (per deployment)\n\n{inspect.cleandoc(Settings.__doc__ or '')}\n\n{_table(Settings)}",
    ]
    return "\n\n".join(part.strip() for part in parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
