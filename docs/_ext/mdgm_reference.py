"""Reference pages generated from the package itself when the docs are built, so they cannot drift.

Directives:

``.. mdgm-interfaces::``
    every ``msg/*.msg`` and ``action/*.action`` of the package: a table of its fields and the definition.
``.. mdgm-fusion-parameters::``
    the fusion node's parameters, from the node's own declarations in ``mdgm_ros.streams.params``
    (``declare_fusion_params`` run against a recording stand-in for a node: nothing of rclpy starts),
    with the value ``config/fusion.yaml`` sets, and the parameters the node class declares itself
    (read from ``mdgm_ros/ros/fusion_node.py`` with :mod:`ast`).
``.. mdgm-node-parameters:: mdgm_ros/ros/trainer_node.py``
    the parameters a node class declares in its source, read with :mod:`ast` (nothing is imported).
``.. mdgm-launch-arguments:: launch/fusion.launch.py``
    the ``DeclareLaunchArgument`` calls of a launch file, read with :mod:`ast`.
``.. mdgm-families::``
    Table 1 of the model families, as ``mdgm-ros families`` prints it (its own function's output).
``.. mdgm-cli::``
    the ``--help`` of ``mdgm-ros`` and of each of its subcommands, from ``mdgm_ros.cli.build_parser``.

The parameter declarations are read by :mod:`mdgm_ros.ros.node_help` (``declared_in_source``,
``recorded_fusion_parameters``, ``value_text``, ``type_text``), the same code that words the nodes' ``--help``.

Imported names: ``mdgm_ros.core.FAMILIES``, ``mdgm_ros.core.families.table.families_command``,
``mdgm_ros.streams.params`` (``flatten_parameters``, ``LIVE``,
``LIVE_PER_STREAM``, ``DEFERRED``, ``READ_ONLY``) and ``mdgm_ros.cli.build_parser``.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any, Callable

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from mdgm_ros.ros.node_help import declared_in_source, recorded_fusion_parameters, type_text, value_text

ROOT = Path(__file__).resolve().parents[2]          # the package: package.xml, msg/, action/, mdgm_ros/


class ReferenceError(Exception):
    """What the code holds no longer fits what the generator reads: the docs build stops and says so."""


# --------------------------------------------------------------------------------------------- RST text
_SPECIAL = re.compile(r"([\\`*_|\[\]<>])")


def esc(text: Any) -> str:
    """Plain text as reStructuredText: every markup character escaped, a leading list marker too."""
    out = _SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")
    if re.match(r"^([-+#]|\d+[.)])(\s|$)", out):
        out = "\\" + out
    return out


def lit(text: Any) -> str:
    """Inline code (``...``) for any text."""
    text = str(text)
    if not text:
        return "``''``"
    if "``" in text or text.startswith("`") or text.endswith("`") or text != text.strip():
        return ":code:`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return f"``{text}``"


def list_table(header: list[str], rows: list[list[str]], widths: list[int] | None = None) -> list[str]:
    """A list-table; cells are reStructuredText already (use esc / lit)."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + (cell if cell.strip() else "\\ "))
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------- interfaces
def parse_interface(text: str) -> tuple[str, list[tuple[str, list[tuple[str, str, str]]]]]:
    """(leading comment, [(part name, [(type, name, comment)])]) of a .msg/.action/.srv definition."""
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "---":
            parts.append([])
        else:
            parts[-1].append(line)
    names = {1: [""], 2: ["Request", "Response"], 3: ["Goal", "Result", "Feedback"]}.get(len(parts))
    if names is None:
        raise ReferenceError(f"an interface with {len(parts)} parts separated by ---")
    leading: list[str] = []
    out = []
    for index, (name, lines) in enumerate(zip(names, parts)):
        fields: list[tuple[str, str, str]] = []
        pending: list[str] = []
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                comment = stripped.lstrip("#").strip()
                # the comment lines that open the file describe the whole interface; later ones the next field
                (leading if index == 0 and not fields else pending).append(comment)
                continue
            body, _, comment = stripped.partition("#")
            tokens = body.split()
            if len(tokens) < 2:
                raise ReferenceError(f"cannot read the field line {stripped!r}")
            ftype, fname = tokens[0], " ".join(tokens[1:])
            description = " ".join([*pending, comment.strip()]).strip()
            pending = []
            fields.append((ftype, fname, description))
        out.append((name, fields))
    return " ".join(leading), out


def interfaces_rst(root: Path, note: Callable[[Path], None]) -> list[str]:
    files = sorted(root.glob("msg/*.msg")) + sorted(root.glob("action/*.action")) + sorted(root.glob("srv/*.srv"))
    if not files:
        raise ReferenceError(f"no msg/, action/ or srv/ definitions under {root}")
    lines: list[str] = []
    for path in files:
        note(path)
        kind = path.parent.name
        full = f"mdgm_ros/{kind}/{path.stem}"
        text = path.read_text(encoding="utf-8")
        summary, parts = parse_interface(text)
        lines += [f".. _{kind}-{path.stem}:", "", full, "~" * len(full), ""]
        if summary:
            lines += [esc(summary), ""]
        for part, fields in parts:
            if part:
                lines += [f"**{part}**", ""]
            if fields:
                lines += list_table(["field", "type", "meaning"],
                                    [[lit(n), lit(t), esc(c)] for t, n, c in fields], [20, 25, 55])
            else:
                lines += ["(no fields)", ""]
        lines += [f"Definition (``{kind}/{path.name}``):", "", ".. code-block:: text", ""]
        lines += ["   " + line if line.strip() else "" for line in text.rstrip("\n").splitlines()]
        lines.append("")
    return lines


# -------------------------------------------------------------------------------- parameters from code
def _range_text(descriptor: Any) -> str:
    for attr, shown in (("floating_point_range", "{:g}"), ("integer_range", "{:d}")):
        ranges = list(getattr(descriptor, attr, None) or [])
        if ranges:
            return f"[{shown.format(ranges[0].from_value)}, {shown.format(ranges[0].to_value)}]"
    return ""


def _file_values(path: Path, node: str) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = (doc.get(node) or doc.get(f"/{node}") or {}).get("ros__parameters")
    if section is None:
        raise ReferenceError(f"{path} has no '{node}: ros__parameters:' section")
    return importlib.import_module("mdgm_ros.streams.params").flatten_parameters(section)


def fusion_parameters_rst(note: Callable[[Path], None]) -> list[str]:
    params = importlib.import_module("mdgm_ros.streams.params")
    note(Path(params.__file__))
    declared = recorded_fusion_parameters()    # declare_fusion_params against a ParameterRecorder
    if "modalities" not in declared or "bundle" not in declared:
        raise ReferenceError("declare_fusion_params no longer declares 'bundle' and 'modalities'")
    fusion_yaml = ROOT / "config" / "fusion.yaml"
    note(fusion_yaml)
    in_file = _file_values(fusion_yaml, "mdgm_fusion")
    live, live_stream = set(params.LIVE), set(params.LIVE_PER_STREAM)
    deferred, read_only = set(params.DEFERRED), set(params.READ_ONLY)

    def when(name: str, descriptor: Any) -> str:
        tail = name.rsplit(".", 1)[-1]
        if name in read_only or getattr(descriptor, "read_only", False):
            return "read-only"
        if name in live or ("." in name and tail in live_stream):
            return "live"
        if name in deferred:
            return "reload / configure"
        return "configure"

    modalities = list(declared["modalities"][0])
    node_level = [n for n in declared if n.split(".", 1)[0] not in modalities]
    lines = ["Node-wide parameters:", ""]
    rows = []
    for name in node_level:
        default, descriptor = declared[name]
        shown = value_text(in_file[name]) if name in in_file else ""
        rows.append([lit(name), esc(type_text(default)), lit(value_text(default)), lit(shown) if shown else "",
                     esc(_range_text(descriptor)), esc(when(name, descriptor)),
                     esc(getattr(descriptor, "description", ""))])
    lines += list_table(["parameter", "type", "default", "config/fusion.yaml", "range", "takes effect",
                         "description"], rows, [14, 8, 12, 12, 8, 9, 37])

    suffixes: list[str] = []
    for name in declared:
        head, _, tail = name.partition(".")
        if head in modalities and tail and tail not in suffixes:
            suffixes.append(tail)
    lines += [f"Per modality (``<modality>.<parameter>``), for the default modalities "
              f"{', '.join(lit(m) for m in modalities)}; a cell shows the code's default, then the value "
              f"``config/fusion.yaml`` sets where it sets one (--: not declared for that modality's "
              f"``message_type``):", ""]
    rows = []
    for tail in suffixes:
        cells, descriptor_seen, example = [], None, None
        for modality in modalities:
            key = f"{modality}.{tail}"
            if key not in declared:
                cells.append("--")
                continue
            default, descriptor = declared[key]
            descriptor_seen, example = descriptor_seen or descriptor, key
            cell = lit(value_text(default))
            if key in in_file and in_file[key] != default:
                cell += " / " + lit(value_text(in_file[key]))
            cells.append(cell)
        default = declared[example][0]
        rows.append([lit(tail), esc(type_text(default)), *cells, esc(_range_text(descriptor_seen)),
                     esc(when(example, descriptor_seen)), esc(getattr(descriptor_seen, "description", ""))])
    lines += list_table(["parameter", "type", *modalities, "range", "takes effect", "description"], rows,
                        [12, 7, *([11] * len(modalities)), 7, 8, 22])
    unknown = sorted(set(in_file) - set(declared))
    if unknown:
        raise ReferenceError(f"config/fusion.yaml sets parameters the node does not declare: {unknown}")
    return lines


def node_parameters_rst(path: Path, note: Callable[[Path], None], empty_ok: bool = False) -> list[str]:
    note(path)
    found = declared_in_source(path)
    if not found and not empty_ok:
        raise ReferenceError(f"{path.relative_to(ROOT)} declares no parameters the generator can read")
    rows = [[lit(p["name"]), esc(p["type"]), lit(p["default"]), esc("read-only" if p["read_only"] else ""),
             esc(p["description"])] for p in found]
    return list_table(["parameter", "type", "default", "", "description"], rows, [16, 8, 30, 8, 38]) if rows else []


# ----------------------------------------------------------------------------------- launch arguments
def launch_arguments_rst(path: Path, note: Callable[[Path], None]) -> list[str]:
    note(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    shares = {node.targets[0].id for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and "FindPackageShare" in ast.unparse(node.value)}

    def path_text(element: ast.AST) -> str:
        if isinstance(element, ast.Constant):
            return str(element.value)
        if "FindPackageShare" in ast.unparse(element) or getattr(element, "id", None) in shares:
            return "<share>"                     # the package's installed share folder
        return ast.unparse(element)

    rows = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) \
                == "DeclareLaunchArgument" and node.args and isinstance(node.args[0], ast.Constant):
            keywords = {k.arg: k.value for k in node.keywords}
            default = keywords.get("default_value")
            if isinstance(default, ast.Constant):
                shown = value_text(default.value) if default.value != "" else "''"
            elif isinstance(default, ast.Call) and getattr(default.func, "id", "") == "PathJoinSubstitution" \
                    and default.args and isinstance(default.args[0], ast.List):
                shown = "/".join(path_text(e) for e in default.args[0].elts)
            else:
                shown = ast.unparse(default) if default is not None else "(required)"
            description = keywords.get("description")
            rows.append([lit(node.args[0].value), lit(shown),
                         esc(description.value if isinstance(description, ast.Constant) else "")])
    if not rows:
        raise ReferenceError(f"{path.relative_to(ROOT)} declares no launch arguments")
    return list_table(["argument", "default", "description"], rows, [18, 37, 45])


# ------------------------------------------------------------------------------------------- families
def families_table_module():
    """The module behind ``mdgm-ros families``."""
    return importlib.import_module("mdgm_ros.core.families.table")


def _split_row(line: str) -> list[str]:
    r"""The cells of one Markdown table row (``\|`` is a pipe inside a cell)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def families_rst(note: Callable[[Path], None]) -> list[str]:
    from mdgm_ros.core import FAMILIES

    table = families_table_module()
    note(Path(table.__file__))
    printed: list[str] = []
    status = table.families_command(as_json=False, write=printed.append)
    if status != 0:
        raise ReferenceError(f"families_command returned {status}")
    text = "\n".join(printed).splitlines()
    rows = [line for line in text if line.startswith("|")]
    if len(rows) < 3:
        raise ReferenceError("mdgm-ros families printed no table")
    header, body = _split_row(rows[0]), [_split_row(r) for r in rows[2:]]
    names = [row[0] for row in body]
    if sorted(names) != sorted(FAMILIES):
        raise ReferenceError(f"the families table lists {names}, the registry {list(FAMILIES)}")
    lines = list_table([esc(h) for h in header],
                       [[lit(row[0]), *(esc(cell) for cell in row[1:])] for row in body])
    notes = [line[2:] for line in text if line.startswith("- ")]
    if notes:
        lines += ["Notes, as the command prints them:", ""]
        for item in notes:
            match = re.match(r"\*\*(\S+)\*\*: (.*)$", item)
            lines.append(f"* {lit(match.group(1))}: {esc(match.group(2))}" if match else f"* {esc(item)}")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------- the CLI
def _subcommands(parser) -> list[tuple[str, Any]]:
    import argparse

    found = []
    for action in parser._actions:                   # argparse keeps its subcommands in this private list
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
    return found


def cli_rst(note: Callable[[Path], None]) -> list[str]:
    """``--help`` of ``mdgm-ros`` and of every subcommand (nested ones too), as the parser prints it."""
    import os

    cli = importlib.import_module("mdgm_ros.cli")
    note(Path(cli.__file__))
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"                    # argparse wraps to the terminal: one width for the docs
    try:
        parser = cli.build_parser()
        pages: list[tuple[str, str]] = [("mdgm-ros", parser.format_help())]

        def walk(prefix: str, node) -> None:
            for name, sub in _subcommands(node):
                pages.append((f"{prefix} {name}", sub.format_help()))
                walk(f"{prefix} {name}", sub)

        walk("mdgm-ros", parser)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    lines: list[str] = []
    for title, text in pages:
        label = "cli-" + title.replace(" ", "-")
        lines += [f".. _{label}:", "", f"``{title}``", "~" * (len(title) + 4), "",
                  ".. code-block:: text", ""]
        lines += ["   " + line if line.strip() else "" for line in text.rstrip("\n").splitlines()]
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------ directives
class _Generated(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def note(self, path: Path) -> None:
        self.env.note_dependency(str(Path(path).resolve()))

    def run(self) -> list[nodes.Node]:
        try:
            text = self.lines()
        except Exception as err:  # noqa: BLE001 - every failure is a build error naming the directive
            raise self.error(f"{self.name}: {type(err).__name__}: {err}") from err
        container = nodes.section()       # a holder only: its children (sections too) take its place
        nested_parse_with_titles(self.state, StringList(text, source=f"<{self.name}>"), container)
        return container.children


class InterfacesDirective(_Generated):
    def lines(self) -> list[str]:
        return interfaces_rst(ROOT, self.note)


class FusionParametersDirective(_Generated):
    def lines(self) -> list[str]:
        lines = fusion_parameters_rst(self.note)
        own = node_parameters_rst(ROOT / "mdgm_ros" / "ros" / "fusion_node.py", self.note, empty_ok=True)
        if own:
            lines += ["Declared by the node class itself:", "", *own]
        return lines


class NodeParametersDirective(_Generated):
    required_arguments = 1

    def lines(self) -> list[str]:
        return node_parameters_rst(ROOT / self.arguments[0], self.note)


class LaunchArgumentsDirective(_Generated):
    required_arguments = 1

    def lines(self) -> list[str]:
        return launch_arguments_rst(ROOT / self.arguments[0], self.note)


class FamiliesDirective(_Generated):
    option_spec = {"class": directives.class_option}

    def lines(self) -> list[str]:
        return families_rst(self.note)


class CliDirective(_Generated):
    def lines(self) -> list[str]:
        return cli_rst(self.note)


def setup(app) -> dict[str, Any]:
    app.add_directive("mdgm-cli", CliDirective)
    app.add_directive("mdgm-interfaces", InterfacesDirective)
    app.add_directive("mdgm-fusion-parameters", FusionParametersDirective)
    app.add_directive("mdgm-node-parameters", NodeParametersDirective)
    app.add_directive("mdgm-launch-arguments", LaunchArgumentsDirective)
    app.add_directive("mdgm-families", FamiliesDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
