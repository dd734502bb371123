"""How a node describes itself: its ``--help`` text and the parameters it declares, read from its source.

The one place that knows this. :func:`guard.node_main <mdgm_ros.ros.guard.node_main>` prints
:func:`help_text` when :func:`wants_help` says so, before a node's ``main`` runs (no ``rclpy.init``, no
node, no model); the documentation's reference pages (docs/_ext/mdgm_reference.py) read the same
declarations (:func:`declared_in_source`, :class:`ParameterRecorder` with
``mdgm_ros.streams.params.declare_fusion_params``), so ``--help`` and docs/nodes.rst agree.

Nothing here imports rclpy, and only :func:`help_text` of a node that calls ``declare_fusion_params``
imports ``mdgm_ros.streams.params``.
"""
from __future__ import annotations

import ast
import functools
import importlib
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

HELP_FLAGS = ("-h", "--help")
WIDTH = 100                      # columns of the help text
ROS_USAGE = "[--ros-args [-p NAME:=VALUE]... [--params-file FILE]]"

# Where to read on, per executable (the console-script names of setup.py). ``config``: (label, file in
# config/), listed only when the file exists; ``docs``: pages of docs/; ``example``: one command line.
NODES: dict[str, dict[str, Any]] = {
    "fusion_node": {
        "node": "mdgm_fusion",
        "config": [("params file (node mdgm_fusion)", "fusion.yaml")],
        "docs": ["docs/nodes.rst (The fusion node)"],
        "example": "fusion_node --ros-args --params-file config/fusion.yaml -p bundle:=models/default",
    },
    "trainer_node": {
        "node": "mdgm_trainer",
        "config": [("train config (parameter config)", "train.yaml")],
        "docs": ["docs/nodes.rst (The trainer node)"],
        "example": "trainer_node --ros-args -p bags:=[bags/run1] -p out:=models/mine",
    },
    "sim_robot_node": {
        "node": "sim_robot",
        "config": [],
        "docs": ["docs/nodes.rst", "docs/simulator.rst (parameter table)"],
        "example": "sim_robot_node --ros-args -p duration:=60.0 -p faults:=all",
    },
    "synthetic_streams": {
        "node": "synthetic_streams",
        "config": [],
        "docs": ["docs/nodes.rst", "docs/simulator.rst"],
        "example": "synthetic_streams --malformed --duration 10",
    },
}


# ------------------------------------------------------------------------------------ the command line
def wants_help(argv: list[str] | None = None) -> bool:
    """True when ``-h`` or ``--help`` is one of the node's arguments, before or after ``--ros-args`` (the
    ROS arguments have no help flag of their own: rcl would refuse it as unknown). ``argv``: the list a
    node's ``main`` got (with or without the program name), or ``sys.argv[1:]`` when None."""
    return any(arg in HELP_FLAGS for arg in (sys.argv[1:] if argv is None else argv))


def program_name(main: Callable[..., Any]) -> str:
    """The executable's name for a node's ``main``: the last part of its module's name (``python -m``
    runs it as ``__main__``: the name it was started under)."""
    module = getattr(main, "__module__", "") or ""
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------- values as text
def value_text(value: Any) -> str:
    """A default as the ROS command line and params files write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) if v != "" else "''" for v in value) + "]"
    return repr(value)


def type_text(value: Any) -> str:
    """The ROS parameter type of a default."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "string array" if all(isinstance(v, str) for v in value) else "array"
    return type(value).__name__


# ------------------------------------------------------------------------- declarations, from the code
class ParameterRecorder:
    """Stands in for a node: records every declared parameter (name, default, descriptor)."""

    def __init__(self) -> None:
        self.declared: dict[str, tuple[Any, Any]] = {}

    def declare_parameter(self, name: str, default: Any, descriptor: Any = None) -> Any:
        self.declared[name] = (default, descriptor)
        return type("Parameter", (), {"value": default})()


def recorded_fusion_parameters() -> dict[str, tuple[Any, Any]]:
    """name -> (default, descriptor) of every parameter ``declare_fusion_params`` declares with its defaults
    (the default modalities), run against a :class:`ParameterRecorder`: nothing of rclpy starts."""
    from ..streams.params import declare_fusion_params

    recorder = ParameterRecorder()
    declare_fusion_params(recorder)
    return recorder.declared


def docstring_of(tree: ast.Module, function: str) -> str:
    """The first line of the docstring of ``function`` in ``tree`` ('' if none)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            doc = ast.get_docstring(node) or ""
            return doc.strip().splitlines()[0] if doc.strip() else ""
    return ""


def descriptor_fields(call: ast.AST, aliases: dict[str, ast.AST]) -> tuple[ast.AST | None, bool]:
    """(description expression, read_only) of a ParameterDescriptor(...) call."""
    description, read_only = None, False
    if isinstance(call, ast.Call):
        for keyword in call.keywords:
            if keyword.arg == "description":
                description = aliases.get(getattr(keyword.value, "id", ""), keyword.value)
            elif keyword.arg == "read_only" and isinstance(keyword.value, ast.Constant):
                read_only = bool(keyword.value.value)
    return description, read_only


def declared_in_source(path: Path) -> list[dict[str, Any]]:
    """The parameters a node module declares itself: ``declare_parameter(NAME, DEFAULT, descriptor)``
    calls with a literal name, directly or through a lambda that wraps one (``p = lambda name, default,
    text: self.declare_parameter(name, default, ParameterDescriptor(description=text))``).

    Each: ``name``, ``type``, ``default`` (as text; a computed default with its function's docstring),
    ``expression`` (the default's source), ``description``, ``read_only``, ``line``."""
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    wrappers: dict[str, tuple[list[str], ast.Call]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            inner = [c for c in ast.walk(node.value.body) if isinstance(c, ast.Call)
                     and getattr(c.func, "attr", getattr(c.func, "id", "")) == "declare_parameter"]
            if inner:
                wrappers[node.targets[0].id] = ([a.arg for a in node.value.args.args], inner[0])
    found: list[dict[str, Any]] = []

    def record(name_node: ast.AST, default: ast.AST, descriptor: ast.AST | None, aliases: dict[str, ast.AST]):
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            return                       # a computed name (a loop over modalities): not a fixed parameter
        description, read_only = descriptor_fields(descriptor, aliases) if descriptor is not None else (None, False)
        expression = ast.unparse(default)
        try:
            value = ast.literal_eval(default)
            shown, kind = value_text(value), type_text(value)
            expression = shown
        except (ValueError, SyntaxError):
            shown = expression
            kind = "string" if isinstance(default, ast.Call) and getattr(default.func, "id", "") == "str" else ""
            if isinstance(default, ast.Call) and isinstance(default.func, ast.Name):
                doc = docstring_of(tree, default.func.id)
                shown += f" ({doc.rstrip('.')})" if doc else ""
        text = ""
        if isinstance(description, ast.Constant):
            text = str(description.value)
        elif isinstance(description, ast.JoinedStr):
            text = ast.unparse(description)
        found.append({"name": name_node.value, "type": kind, "default": shown, "expression": expression,
                      "description": text, "read_only": read_only, "line": getattr(name_node, "lineno", 0)})

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        if callee == "declare_parameter" and node.args and not any(node is w[1] for w in wrappers.values()):
            descriptor = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "descriptor"), None)
            if len(node.args) >= 2:
                record(node.args[0], node.args[1], descriptor, {})
        elif callee in wrappers and isinstance(node.func, ast.Name):
            names, inner = wrappers[callee]
            bound = dict(zip(names, node.args))
            pick = lambda arg: bound.get(getattr(arg, "id", ""), arg)  # noqa: E731
            if len(inner.args) >= 2:
                record(pick(inner.args[0]), pick(inner.args[1]), inner.args[2] if len(inner.args) > 2 else None,
                       bound)
    found.sort(key=lambda p: p["line"])
    return found


def calls_in_source(path: Path, function: str) -> bool:
    """Whether the module at ``path`` calls ``function`` (by name or as an attribute)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Call) and function in (getattr(node.func, "id", None),
                                                           getattr(node.func, "attr", None))
               for node in ast.walk(tree))


# ----------------------------------------------------------------------------------------- help text
def _plain(text: str) -> str:
    """reStructuredText inline markup as terminal text: ``x`` and :role:`x` become x."""
    text = re.sub(r":[\w:.-]+:`([^`<]*?)\s*(<[^>]*>)?`", r"\1", text)
    return text.replace("``", "")


def _first_paragraph(doc: str | None) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", (doc or "").strip()) if p.strip()]
    return _plain(" ".join(paragraphs[0].split())) if paragraphs else ""


def _parameter_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    """``name  default  description`` rows, descriptions wrapped under their column."""
    if not rows:
        return []
    name_w = max(len(name) for name, _, _ in rows)
    default_w = max([len(default) for _, default, _ in rows if len(default) <= 14] or [0])
    indent = " " * (2 + name_w + 2 + default_w + 2)
    lines: list[str] = []
    for name, default, description in rows:
        description = description or "-"
        if len(default) > default_w:       # a long default: on its own line, the description under it
            lines.append(f"  {name:<{name_w}}  {default}")
            head = indent
        else:
            head = f"  {name:<{name_w}}  {default:<{default_w}}  "
        lines += textwrap.wrap(description, WIDTH, initial_indent=head, subsequent_indent=indent,
                               break_on_hyphens=False) or [head.rstrip()]
    return lines


def _fusion_rows() -> tuple[list[tuple[str, str, str]], list[str]]:
    """The node-wide parameters of ``declare_fusion_params`` as rows, and the lines on per-modality ones."""
    declared = recorded_fusion_parameters()
    modalities = list(declared["modalities"][0])
    rows = [(name, value_text(default), getattr(descriptor, "description", "") or "")
            for name, (default, descriptor) in declared.items() if name.split(".", 1)[0] not in modalities]
    per: dict[str, list[str]] = {m: [n.split(".", 1)[1] for n in declared if n.startswith(m + ".")]
                                 for m in modalities}
    common = [t for t in per[modalities[0]] if all(t in per[m] for m in modalities)]
    extra: dict[str, list[str]] = {}
    for modality in modalities:
        kind = value_text(declared.get(f"{modality}.message_type", ("?",))[0])
        for tail in per[modality]:
            if tail not in common and tail not in extra.setdefault(kind, []):
                extra[kind].append(tail)
    text = (f"per modality, as <modality>.<parameter> for each name in modalities: {', '.join(common)}; "
            "and by message_type: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in extra.items() if v) + ".")
    return rows, textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="    ")


def _config_file(name: str) -> Path | None:
    from ..config_files import config_path

    try:
        path = config_path(name)
    except Exception:  # noqa: BLE001 - help never fails over a missing file
        return None
    return path if path.is_file() else None


def _module_path(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file) if file and Path(file).is_file() else None


def help_text(prog: str, module: ModuleType | str) -> str:
    """What ``PROG --help`` prints for the node defined in ``module`` (a module or its dotted name): usage,
    the first paragraph of the module's docstring, the node's options (a module-level ``build_parser()``),
    its main parameters (read from its source; ``declare_fusion_params`` recorded), and where to read on."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    info = NODES.get(prog, {})
    build_parser = getattr(module, "build_parser", None)
    lines: list[str] = []
    options: list[str] = []
    if callable(build_parser):              # a node with its own options: argparse words them
        parser = build_parser()
        parser.prog, parser.description, parser.epilog = prog, None, None
        parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
        usage, _, rest = parser.format_help().partition("\n\n")
        lines += [*usage.rstrip().splitlines(), " " * len(f"usage: {prog} ") + ROS_USAGE]
        options = rest.rstrip().splitlines()
    else:
        lines.append(f"usage: {prog} [-h] {ROS_USAGE}")
    summary = _first_paragraph(module.__doc__)
    if summary:
        lines += ["", *textwrap.wrap(summary, WIDTH)]
    if options:
        lines += ["", *options]

    source = _module_path(module)
    rows: list[tuple[str, str, str]] = []
    modality_lines: list[str] = []
    if source is not None and calls_in_source(source, "declare_fusion_params"):
        rows, modality_lines = _fusion_rows()
    if source is not None:
        rows += [(p["name"], p["expression"], p["description"] + (" (read-only)" if p["read_only"] and
                                                                  "read-only" not in p["description"] else ""))
                 for p in declared_in_source(source)]
    node = info.get("node")
    if rows:
        title = f"main parameters (node {node}; name, default, description):" if node else "main parameters:"
        lines += ["", title, *_parameter_lines(rows), *modality_lines]

    more = [f"  {label}: {path}" for label, name in info.get("config", [])
            for path in [_config_file(name)] if path is not None]
    more += [f"  reference: {page}" for page in info.get("docs", ["docs/nodes.rst"])]
    lines += ["", "read on:", *more]
    lines += ["", "example:", f"  {info.get('example', prog + ' --ros-args -p NAME:=VALUE')}"]
    return "\n".join(lines) + "\n"
