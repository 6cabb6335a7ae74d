"""A griffe extension for the API reference: render this project's docstrings as Markdown.

The package's docstrings are written for readers of the source and for
doctest: Sphinx roles (``:class:`~calm_azure_sync.ConfigError```), ``>>>``
examples and reST ``::`` literal blocks. Markdown shows the first as stray
colons and the second as nested quotes. This extension rewrites them once,
after griffe has loaded the package and before mkdocstrings renders it:

- a role becomes a cross-reference when it names something the API page
  renders (a public name, or a documented member of one), else inline code;
- a run of ``>>>`` lines with their output becomes a fenced ``pycon`` block;
- a paragraph ending in ``::`` ends in ``:`` (the indented block after it is
  already a Markdown code block).

It is registered in ``mkdocs.yml`` and lives here, not in the package, because
only the documentation site needs it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PACKAGE = "calm_azure_sync"
_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_PROMPT = re.compile(r"^(\s*)>>> ")


class MarkdownDocstrings(griffe.Extension):
    """Rewrite reST-flavoured docstrings of the package into Markdown."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        public = _public_names(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _to_markdown(obj.docstring.value, obj, pkg, public)


def _public_names(pkg: griffe.Module) -> set[str]:
    exports = pkg.exports or ()
    return {str(name) for name in exports}


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found: list[griffe.Object] = [obj]
    for member in obj.members.values():
        if member.is_alias:
            continue
        found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _rendered(identifier: str, pkg: griffe.Module, public: set[str]) -> bool:
    """Whether the API page renders an anchor for ``calm_azure_sync.<Name>[.<member>]``."""
    parts = identifier.split(".")
    if parts[0] != PACKAGE or len(parts) not in (2, 3) or parts[1] not in public:
        return False
    try:
        target = pkg[parts[1]]
        if len(parts) == 3:
            if parts[2].startswith("_"):
                return False
            target = target[parts[2]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return len(parts) == 2 or bool(getattr(target, "docstring", None))


def _resolve(target: str, obj: griffe.Object, pkg: griffe.Module, public: set[str]) -> str | None:
    candidates = [target] if target.startswith(PACKAGE + ".") else [f"{PACKAGE}.{target}"]
    owner = obj if obj.is_class else obj.parent
    if owner is not None and owner.is_class and owner.name in public and "." not in target:
        candidates.append(f"{PACKAGE}.{owner.name}.{target}")
    for candidate in candidates:
        if _rendered(candidate, pkg, public):
            return candidate
    return None


def _role(match: re.Match[str], obj: griffe.Object, pkg: griffe.Module, public: set[str]) -> str:
    short, target = match.group(1) == "~", match.group(2)
    title = target.rsplit(".", 1)[-1] if short else target
    identifier = _resolve(target, obj, pkg, public)
    if identifier is None:
        return f"`{title}`"
    return f"[`{title}`][{identifier}]"


def _to_markdown(text: str, obj: griffe.Object, pkg: griffe.Module, public: set[str]) -> str:
    text = _ROLE.sub(lambda match: _role(match, obj, pkg, public), text)
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        prompt = _PROMPT.match(line)
        if prompt is None:
            if line.rstrip().endswith("::") and line.strip() != "::":
                line = line.rstrip()[:-1]
            out.append(line)
            index += 1
            continue
        indent = prompt.group(1)
        block = []
        while index < len(lines) and lines[index].strip():
            block.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        if out and out[-1].strip():
            out.append("")
        # Fences start at the margin: an indented one would be an indented code block.
        out.extend(["```pycon", *block, "```", ""])
    return "\n".join(out)
