"""The documentation keeps up with the code.

* Every shell command in a ``console`` (or ``bash``/``sh``) block of docs/*.rst and README.md is either
  run here (RUN: the ``--help`` forms and other commands of seconds) or mapped in COVERED to the existing
  test that runs it (that test must exist). A command added to the docs fails
  ``test_every_documented_command_is_run_here_or_covered`` until it is run here or mapped.
* Every ``mdgm-ros`` command written anywhere in the pages (blocks, tables, prose) parses with today's
  command line: a renamed or removed flag fails here, not in a reader's terminal.
* README.md is a short manual that opens with the two set-up commands; its links resolve.
* No tracker words in the pages.
* docs/conf.py and the reference generator (docs/_ext/mdgm_reference.py) import, and the generator
  still reads the code. ``make docs`` itself (the Sphinx build, warnings as errors) is run by CI apart.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.rst"))
MAX_README_LINES = 250
SHELL_BLOCKS = ("console", "bash", "sh", "shell")

# Cheap: run here, in-process, each must exit 0 (cache commands on an empty cache folder of their own).
RUN = {
    "mdgm-ros --help",
    "mdgm-ros train --help",
    "mdgm-ros bench zoo --help",
    "mdgm-ros families",
    "mdgm-ros families --json",
    "mdgm-ros info models/default",
    "mdgm-ros cache list --json",
    "mdgm-ros cache prune --max-gb 20 --dry-run",
    "mdgm-ros cache prune --older-than 30",
    "mdgm-ros bench zoo --quick --families mopoe",
    "mdgm-ros bench weak missing --quick --families mvae",
    "mdgm-ros echo --help",
    "mdgm-ros watch --help",
}

# Expensive: each documented command -> the tests that run it (or the same path with small sizes).
# (test file, [test functions], what they run when it is not the command as written)
COVERED: dict[str, tuple[str, list[str], str]] = {
    # set-up and end-to-end runs
    "make demo": ("test/test_demo.py", ["test_quick_demo_runs_the_whole_loop_over_real_topics_in_a_terminal"],
                  "mdgm-ros demo --quick, the same loop with short runs"),
    "make demo-quick": ("test/test_demo.py",
                        ["test_quick_demo_runs_the_whole_loop_over_real_topics_in_a_terminal"], ""),
    "make test": ("test/test_docs.py", ["test_ci_runs_the_make_targets_the_docs_promise"],
                  "make test is the suite itself; CI's .ci/run runs it"),
    "make install": ("test/test_packaging.py", ["test_install_requires_leaves_torch_to_the_platform"],
                     "every make target depends on it; the suite runs in the venv it makes"),
    "make example": ("test/test_cli.py", ["test_example_runs_end_to_end_and_bundle_info_reads_it"],
                     "mdgm-ros example --quick"),
    "make bench": ("test/test_cli.py", ["test_bench_fusion_prints_the_latency_json",
                                        "test_bench_train_times_only_the_families_asked_for",
                                        "test_bench_ros_runs_over_dds_and_prints_json",
                                        "test_bench_data_prints_the_simulator_and_alignment_json"],
                   "each part of bench all, with small sizes"),
    "make docs": ("test/test_docs.py", ["test_the_docs_configuration_and_the_reference_generator_import"],
                  "the Sphinx build itself runs in CI apart"),
    "colcon build": ("test/test_packaging.py", ["test_colcon_build_and_run_from_the_install_space"], ""),
    # simulator, bags, replay
    "mdgm-ros simulate --out bags/train --duration 300 --seed 0": (
        "test/test_ros_tools.py", ["test_cli_simulate_writes_sqlite3_and_refuses_an_existing_bag"],
        "a 1.5 s bag"),
    "mdgm-ros simulate --out bags/test --duration 180 --seed 1 --faults all --per-kind 1": (
        "test/test_demo.py", ["test_quick_demo_runs_the_whole_loop_over_real_topics_in_a_terminal"],
        "the demo simulates its test bag with every fault kind"),
    "mdgm-ros simulate --out bags/run1 --duration 300 --seed 0": (
        "test/test_ros_tools.py", ["test_cli_simulate_writes_sqlite3_and_refuses_an_existing_bag"], "a 1.5 s bag"),
    "mdgm-ros simulate --out bags/run2 --duration 60 --seed 2 --storage sqlite3": (
        "test/test_ros_tools.py", ["test_cli_simulate_writes_sqlite3_and_refuses_an_existing_bag"], "a 1.5 s bag"),
    "mdgm-ros play bags/run1 --rate 2 --loop": (
        "test/test_ros_tools.py", ["test_play_loops_and_the_stamps_start_over"], ""),
    "mdgm-ros play bags/test --clock --drop /audio:20:23": (
        "test/test_ros_tools.py", ["test_play_replays_a_bag_with_its_timing_clock_and_drops"], ""),
    "sim_robot_node": ("test/test_ros_tools.py", ["test_sim_robot_node_publishes_the_live_topics"], ""),
    "synthetic_streams --malformed": (
        "test/test_fusion_node.py", ["test_malformed_messages_are_counted_and_the_node_keeps_publishing"], ""),
    # training
    "mdgm-ros train --bags bags/train --out models/mine": (
        "test/test_training_ux.py", ["test_cli_trains_with_the_progress_bar_on_in_a_terminal"], "2 epochs"),
    "mdgm-ros train --bags bags/monday bags/tuesday --config bags/train.yaml --out models/cell3 --resume": (
        "test/test_training_reliability.py", ["test_sigterm_stops_train_like_ctrl_c_and_resume_finishes"], ""),
    "mdgm-ros train --bags bags/monday bags/tuesday --config config/train_temporal.yaml --out "
    "models/cell3_temporal": (
        "test/test_temporal_train_cli.py",
        ["test_a_temporal_bundle_from_a_bag_carries_windows_predictive_calibration_and_the_transition"],
        "the temporal family through run_training, as train runs it"),
    "mdgm-ros train --bags bags/train --config config/train_temporal.yaml --out models/temporal": (
        "test/test_temporal_train_cli.py",
        ["test_a_temporal_bundle_from_a_bag_carries_windows_predictive_calibration_and_the_transition"], ""),
    "mdgm-ros train --bags bags/fleet/* --out models/fleet --set data.shards=true": (
        "test/test_shards.py", ["test_training_streams_from_shards_into_a_calibrated_bundle"], ""),
    "torchrun --nproc-per-node 2 -m mdgm_ros train --bags bags/fleet/* --out models/fleet": (
        "test/test_distributed.py", ["test_two_ranks_match_one_process"], ""),
    "trainer_node": ("test/test_train_action.py", ["test_train_action_feedback_cancel_and_reload"], ""),
    "ros2 action send_goal -f /mdgm_trainer/train mdgm_ros/action/Train \"{bags: [$PWD/bags/run1], out: "
    "$PWD/models/mine, epochs: 0, overrides: ['training.lr=1e-3'], fusion_node: /mdgm_fusion}\"": (
        "test/test_train_action.py", ["test_train_action_feedback_cancel_and_reload"],
        "the same goal sent by an rclpy action client (the ros2 command line is not installed here)"),
    "trainer_node --ros-args -p bags:=\"['bags/run1']\" -p out:=models/mine": (
        "test/test_ros_tools.py", ["test_trainer_node_trains_then_reloads_the_fusion_node"], ""),
    # evaluation and labels
    "mdgm-ros evaluate --model models/mine --bags bags/test --plots out/": (
        "test/test_training_ux.py", ["test_label_command_and_evaluate_on_a_real_format_bag"], ""),
    "mdgm-ros evaluate --model models/mine --bags bags/test --plots out/ --json": (
        "test/test_training_ux.py", ["test_label_command_and_evaluate_on_a_real_format_bag"], ""),
    "mdgm-ros evaluate --model models/temporal --compare models/per_frame --bags bags/test --plots out/": (
        "test/test_temporal_train_cli.py",
        ["test_evaluate_compares_the_temporal_and_the_per_frame_model_on_one_bag"],
        "evaluate_bags with compare and plots, as evaluate runs it"),
    "mdgm-ros label bags/tuesday --add 31.2:33.0:collision --add 75:78.5:gripper_slip": (
        "test/test_training_ux.py", ["test_label_command_and_evaluate_on_a_real_format_bag"], ""),
    "mdgm-ros calibrate --model models/iiwa --bags bags/wednesday bags/thursday --out models/iiwa-cal": (
        "test/test_calibrate.py", ["test_calibrate_measures_a_bundle_anew_on_unseen_bags",
                                   "test_calibrate_refuses_the_bags_the_bundle_was_trained_on"],
        "a trained bundle calibrated on a bag it never saw, as the command runs"),
    "mdgm-ros info models/mine": (
        "test/test_cli.py", ["test_example_runs_end_to_end_and_bundle_info_reads_it"], ""),
    # the nodes
    "fusion_node --ros-args -p bundle:=models/mine -p use_sim_time:=true": (
        "test/test_any_robot.py", ["test_the_node_runs_the_bundle_alone_and_publishes_wrench_and_imu_imputations"],
        "the node on a trained bundle alone, use_sim_time, the bag replayed with --clock"),
    # your own robot: the KUKA from its bags alone
    "mdgm-ros simulate --robot kuka --out bags/train --duration 120 --seed 1": (
        "test/test_any_robot.py", ["test_init_proposes_every_sensor_stream_and_says_why"],
        "the same command with a shorter duration and smaller images"),
    "mdgm-ros simulate --robot kuka --out bags/test --duration 60 --seed 2 --faults all --per-kind 1": (
        "test/test_sim_kuka.py", ["test_a_collision_shows_in_the_force_torque_imu_and_joints"], "shorter"),
    # the prepared GPU check: the CPU form runs; the others are that command on another device / python
    "make gpu-check GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1": (
        "test/test_gpu_check.py", ["test_make_gpu_check_on_the_cpu_writes_one_report_with_every_part"], "as written"),
    "make gpu-check": ("test/test_gpu_check.py", ["test_make_gpu_check_on_the_cpu_writes_one_report_with_every_part"],
                       "on the CPU with --quick: the same parts, fewer iterations"),
    "make gpu-check GPU_CHECK_PY=python3": (
        "test/test_gpu_check.py", ["test_make_gpu_check_on_the_cpu_writes_one_report_with_every_part"],
        "the venv's python; a machine's own python3 runs the same module"),
    "make own-robot": ("test/test_any_robot.py", ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"],
                       "the same simulate -> init -> train -> evaluate path with short bags and 1 epoch"),
    "make own-robot TRAIN_SEED=3 TEST_SEED=4": ("test/test_any_robot.py",
                                                ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"],
                                                ""),
    "make own-robot TRAIN_SEED=5 TEST_SEED=6": ("test/test_any_robot.py",
                                                ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"],
                                                ""),
    "make own-robot TRAIN_SEED=1 TEST_SEED=2 TRAIN_S=300": (
        "test/test_any_robot.py", ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"], ""),
    "mdgm-ros init --bags bags/train --out cfg": (
        "test/test_any_robot.py", ["test_init_proposes_every_sensor_stream_and_says_why"], ""),
    "mdgm-ros train --config cfg/train.yaml --bags bags/train --out models/iiwa": (
        "test/test_any_robot.py", ["test_the_bundle_records_its_stream_settings"], "with --epochs 1"),
    "mdgm-ros train --config cfg/train.yaml --bags bags/other_day --out models/iiwa": (
        "test/test_any_robot.py", ["test_every_mistake_is_reported_in_one_run_with_its_fix"], ""),
    "mdgm-ros label bags/test --add 31.2:33.0:collision": (
        "test/test_training_ux.py", ["test_label_command_and_evaluate_on_a_real_format_bag"], ""),
    "mdgm-ros evaluate --model models/iiwa --bags bags/test": (
        "test/test_any_robot.py", ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"], ""),
    "mdgm-ros evaluate --model models/iiwa --bags bags/tuesday --plots out/": (
        "test/test_any_robot.py", ["test_evaluate_needs_no_params_and_prints_the_users_figures_only"],
        "plots: test/test_evaluate.py"),
    "fusion_node --ros-args -p bundle:=models/iiwa -p use_sim_time:=true": (
        "test/test_any_robot.py", ["test_the_node_runs_the_bundle_alone_and_publishes_wrench_and_imu_imputations"],
        ""),
    "fusion_node --ros-args -p bundle:=/path/to/models/iiwa": (
        "test/test_any_robot.py", ["test_the_node_runs_the_bundle_alone_and_publishes_wrench_and_imu_imputations"],
        ""),
    "mdgm-ros play bags/test --clock --drop /iiwa/wrist_ft:20:23": (
        "test/test_any_robot.py", ["test_the_node_runs_the_bundle_alone_and_publishes_wrench_and_imu_imputations"],
        "the test drops /iiwa/wrist_ft and /iiwa/imu from 6 s to 10 s"),
    "fusion_node --ros-args --params-file config/fusion.yaml -p bundle:=models/default": (
        "test/test_fusion_node.py", ["test_latent_is_stamped_with_the_camera_stamp_and_laid_out_as_documented"],
        "the node with config/fusion.yaml and a bundle parameter"),
    "ros2 run mdgm_ros fusion_node": (
        "test/test_packaging.py", ["test_colcon_build_and_run_from_the_install_space"],
        "the installed fusion_node with no parameters runs models/default"),
    "ros2 launch mdgm_ros sim.launch.py faults:=all": (
        "test/test_launch.py", ["test_launch_files_run_where_launch_ros_imports",
                                "test_sim_launch_includes_the_fusion_launch_with_the_shipped_default_model"],
        "launch_ros is not pip-installable here: the launch files are checked statically"),
    "ros2 launch mdgm_ros fusion.launch.py model:=/path/to/bundle namespace:=left use_sim_time:=true": (
        "test/test_launch.py", ["test_launch_files_take_the_usual_arguments",
                                "test_the_arguments_reach_the_fusion_node"], ""),
    "ros2 launch mdgm_ros fusion.launch.py model:=/path/to/models/iiwa params_file:=/path/to/cfg/fusion.yaml": (
        "test/test_launch.py", ["test_launch_files_take_the_usual_arguments",
                                "test_the_arguments_reach_the_fusion_node"], ""),
    # watching the node
    "mdgm-ros echo": ("test/test_watch.py", ["test_echo_lists_the_topics_with_types_and_publishers"], ""),
    "mdgm-ros echo /mdgm_fusion/latent --once": (
        "test/test_watch.py", ["test_echo_once_prints_one_latent_as_yaml"], ""),
    "mdgm-ros echo /mdgm_fusion/latent --json -n 3": (
        "test/test_watch.py", ["test_echo_json_count_field_and_an_absent_topic"], ""),
    "mdgm-ros echo /mdgm_fusion/anomaly --field score --once": (
        "test/test_watch.py", ["test_echo_json_count_field_and_an_absent_topic"], ""),
    "mdgm-ros watch": ("test/test_watch.py", ["test_watch_draws_the_live_view_in_a_terminal_and_ctrl_c_exits_130"],
                       "in a pseudo-terminal, stopped with SIGINT"),
    "mdgm-ros watch --once": ("test/test_watch.py", ["test_watch_once_prints_a_plain_summary"], ""),
    "fusion_node --ros-args --params-file config/fusion.yaml -p standard_mirrors:=true": (
        "test/test_fusion_node.py", ["test_latent_is_stamped_with_the_camera_stamp_and_laid_out_as_documented"],
        "the node with config/fusion.yaml, standard_mirrors:=true and a bundle; the mirror's layout checked"),
    # benchmarks
    "mdgm-ros bench zoo --families mopoe,mvae --epochs 72 --out zoo_out": (
        "test/test_zoo.py", ["test_tiny_zoo_reports_every_metric_and_writes_its_files"], "tiny sizes"),
    "mdgm-ros bench zoo --families mopoe,mvae --epochs 72 --out zoo_out --resume": (
        "test/test_zoo_resume.py", ["test_a_stop_signal_then_resume_from_the_command_line"], "tiny sizes"),
    "pip install multivae==1.0.3": (
        "test/test_parity.py", ["test_the_command_refuses_without_multivae_in_one_line_naming_the_fix"],
        "the optional extra; without it the command names this install"),
    "mdgm-ros bench parity --families jmvae,dmvae_lee --seeds 0,1,2 --out parity_out": (
        "test/test_parity.py", ["test_a_quick_run_reports_both_libraries_and_reads_its_rows_back",
                                "test_the_report_has_a_row_per_family_and_seed_with_the_difference_and_the_markdown_table"],
        "tiny sizes, where MultiVae is installed"),
    "mdgm-ros bench zoo --merge a/zoo.json,b/zoo.json --out zoo_out": (
        "test/test_zoo.py", ["test_zoo_options_parse_and_reports_merge"], ""),
    "mdgm-ros bench weak missing --families mvae --modalities 3 --train 2500 --epochs 8 --batch 32 "
    "--classifier-epochs 15": (
        "test/test_weak.py", ["test_bench_weak_from_the_cli_writes_its_report_and_refuses_bad_shares"], "tiny sizes"),
    "mdgm-ros bench weak contrastive --families mopoe --seeds 2 --train 2500 --epochs 8 --batch 32 "
    "--classifier-epochs 15": (
        "test/test_weak.py", ["test_weak_bench_trains_on_incomplete_rows_and_reports_coherence"], "tiny sizes"),
}


# ------------------------------------------------------------------------------------------ reading
def _strip_comment(line: str) -> str:
    """The command without a trailing ``  # comment`` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _commands(lines: list[str], prompt: bool) -> list[str]:
    """Commands of one shell block: ``$ `` lines (a console block) or every non-comment line."""
    found: list[str] = []
    pending: str | None = None
    for raw in lines:
        line = raw.rstrip()
        if pending is not None:
            pending += " " + line.strip().rstrip("\\").strip()
            if not line.endswith("\\"):
                found.append(pending)
                pending = None
            continue
        text = line.strip()
        if prompt:
            if not text.startswith("$ "):
                continue                                  # output shown under a command
            text = text[2:]
        elif not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending = text.rstrip("\\").strip()
        else:
            found.append(text)
    if pending is not None:
        found.append(pending)
    return [" ".join(_strip_comment(c).split()) for c in found if _strip_comment(c).strip()]


def rst_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """(language, lines) of every ``.. code-block::`` / ``.. code::`` in a page."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)", line)
        if not match:
            continue
        indent, body, j = len(match.group(1)), [], i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            body.append(lines[j])
            j += 1
        content = [b for b in body if not re.match(r"^\s*:\w[\w-]*:", b)]    # drop the directive's options
        blocks.append((match.group(2) or "default", content))
    return blocks


def markdown_blocks(path: Path) -> list[tuple[str, list[str], int]]:
    """(language, lines, first line number) of every fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            blocks.append((match.group(1), lines[i + 1:j], i + 1))
            i = j
        i += 1
    return blocks


def documented_commands() -> dict[str, list[str]]:
    """command -> where it is shown."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for language, lines in rst_blocks(page):
            if language in SHELL_BLOCKS:
                for command in _commands(lines, prompt=language == "console"):
                    found.setdefault(command, []).append(page.name)
    for language, lines, _ in markdown_blocks(README):
        if language in SHELL_BLOCKS:
            for command in _commands(lines, prompt=language == "console"):
                found.setdefault(command, []).append(README.name)
    return found


def mdgm_ros_mentions() -> dict[str, list[str]]:
    """Every ``mdgm-ros ...`` written in the pages: commands of shell blocks, lines of other blocks
    that start with it, inline literals. Synopsis forms (``[...]``, ``A|B``, ``...``) are left out."""
    found: dict[str, list[str]] = {}

    def add(text: str, where: str) -> None:
        text = " ".join(_strip_comment(text).split())
        if text.startswith("mdgm-ros") and not re.search(r"(?:^|\s)\[|[{}|]|\.\.\.|…", text):
            found.setdefault(text, []).append(where)

    for command, where in documented_commands().items():
        for w in where:
            add(command, w)
    sources = [(p, p.read_text(encoding="utf-8")) for p in PAGES] + [(README, README.read_text(encoding="utf-8"))]
    for path, text in sources:
        blocks = rst_blocks(path) if path.suffix == ".rst" else [(b[0], b[1]) for b in markdown_blocks(path)]
        for language, lines in blocks:
            if language not in SHELL_BLOCKS:
                for line in lines:
                    add(line.strip(), path.name)
        inline = r"``([^`]+)``" if path.suffix == ".rst" else r"(?<!`)`([^`]+)`(?!`)"
        for match in re.finditer(inline, re.sub(r"\s*\n\s*", " ", text)):
            add(match.group(1), path.name)
    return found


def _defines(test_file: Path, name: str) -> bool:
    tree = ast.parse(test_file.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


# ------------------------------------------------------------------------------------------- tests
def test_every_documented_command_is_run_here_or_covered():
    commands = documented_commands()
    assert commands, "no shell commands found in docs/*.rst and README.md"
    uncovered = {c: w for c, w in commands.items() if c not in RUN and c not in COVERED}
    assert not uncovered, ("commands in the docs that this test neither runs (RUN) nor maps to the test that "
                           f"runs them (COVERED): {uncovered}")


def test_the_run_and_covered_lists_name_only_documented_commands():
    commands = documented_commands()
    stale = sorted((set(RUN) | set(COVERED)) - set(commands))
    assert not stale, f"RUN / COVERED name commands no page shows any more (remove them): {stale}"


@pytest.mark.parametrize("command", sorted(COVERED))
def test_each_covered_command_names_tests_that_exist(command):
    test_file, names, _ = COVERED[command]
    path = ROOT / test_file
    assert path.is_file(), f"{command!r}: {test_file} does not exist"
    missing = [name for name in names if not _defines(path, name)]
    assert not missing, f"{command!r}: {test_file} has no test {missing}"


def _main(argv: list[str]) -> tuple[int, str, str]:
    from mdgm_ros.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:                   # --help
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", sorted(RUN))
def test_each_cheap_documented_command_runs(command, tmp_path, monkeypatch):
    monkeypatch.setenv("MDGM_ROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)
    assert argv[0] == "mdgm-ros", command
    code, out, err = _main(argv[1:])
    assert code == 0, f"{command}: exit {code}\n{err[-2000:]}"
    if argv[-1] == "--help":
        assert out.startswith("usage: mdgm-ros"), out[:200]
    if command == "mdgm-ros families":
        assert out.startswith("| family |")


class _ParseError(Exception):
    pass


# what a mention of a command or a flag in prose gives (``mdgm-ros train``, ``mdgm-ros train --device``):
# the flags it names exist; any other refusal (unrecognized arguments, invalid choice) is a stale page
MENTION = r"the following arguments are required|argument \S+: expected (one|at least one) argument"


def test_every_mdgm_ros_command_in_the_pages_parses_with_the_cli(monkeypatch):
    from mdgm_ros.cli import build_parser

    def error(self, message):                         # argparse would print and exit
        raise _ParseError(message)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    parser = build_parser()
    refused = {}
    for command, where in sorted(mdgm_ros_mentions().items()):
        argv = shlex.split(command)[1:]
        if "--help" in argv or "-h" in argv:
            continue                                  # run by test_each_cheap_documented_command_runs
        try:
            parser.parse_args(argv)
        except _ParseError as err:
            if not re.match(MENTION, str(err)):
                refused[command] = f"{err} ({', '.join(sorted(set(where)))})"
    assert not refused, f"commands in the pages that mdgm-ros refuses: {refused}"


def test_the_readme_is_a_short_manual_that_opens_with_the_two_set_up_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    language, block, start = markdown_blocks(README)[0]
    assert start == 1 and language in SHELL_BLOCKS, "README.md must open with the set-up commands"
    assert _commands(block, prompt=language == "console") == ["make demo", "make test"]
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", "\n".join(lines)), "dated runs belong on docs/benchmarks.rst"


def test_the_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "README.md links into docs/"
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert any(t.startswith("docs/") for t in targets)


FORBIDDEN = re.compile(r"\bissues?\b|\bsessions?\b|\bwaves?\b|DESIGN\.md", re.IGNORECASE)


def test_no_tracker_words_in_the_pages():
    files = [*PAGES, README, ROOT / "CHANGELOG.rst", DOCS / "conf.py", *sorted((DOCS / "_ext").glob("*.py"))]
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "tracker words, or documents the repository does not hold:\n" + \
        "\n".join(hits)


def test_every_page_is_in_the_table_of_contents():
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s{3}(\w+)\s*$", index, re.MULTILINE))
    assert {p.stem for p in PAGES} - {"index"} <= listed


def _import_extension():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        return importlib.import_module("mdgm_reference")
    finally:
        sys.path.remove(str(DOCS / "_ext"))


def test_the_docs_configuration_and_the_reference_generator_import():
    conf = DOCS / "conf.py"
    assert conf.is_file() and "mdgm_reference" in conf.read_text(encoding="utf-8")
    ext = _import_extension()
    seen: list[Path] = []
    note = seen.append
    messages = "\n".join(ext.interfaces_rst(ext.ROOT, note))
    for path in [*ROOT.glob("msg/*.msg"), *ROOT.glob("action/*.action")]:
        assert f"mdgm_ros/{path.parent.name}/{path.stem}" in messages
    parameters = "\n".join(ext.fusion_parameters_rst(note))
    for name in ("bundle", "device", "engine", "precision", "anchor", "absence_after", "staleness", "topic"):
        assert f"``{name}``" in parameters, name
    trainer = ext.declared_in_source(ROOT / "mdgm_ros" / "ros" / "trainer_node.py")
    assert {"bags", "out", "config", "device", "epochs", "fusion_node"} <= {p["name"] for p in trainer}
    assert "bundle_roots" in {p["name"] for p in ext.declared_in_source(ROOT / "mdgm_ros" / "ros" / "fusion_node.py")}
    for launch in ROOT.glob("launch/*.launch.py"):
        assert ext.launch_arguments_rst(launch, note)
    from mdgm_ros.core import FAMILIES
    families = "\n".join(ext.families_rst(note))
    assert all(f"``{name}``" in families for name in FAMILIES)
    cli = "\n".join(ext.cli_rst(note))
    assert "``mdgm-ros train``" in cli and "``mdgm-ros evaluate``" in cli


def test_ci_runs_the_make_targets_the_docs_promise():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("install", "test", "demo", "demo-quick", "example", "bench", "docs", "default-model"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target
    assert re.search(r"sphinx-build -W --keep-going -n -b html docs docs/_build/html", makefile)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
