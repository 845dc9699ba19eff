"""Mutation testing of the modules whose behaviour Varnish specifies (mutmut), one module at a time.

    python tools/mutate.py                       # the fast, fully specified ones (rfc2616, ranges, bans)
    python tools/mutate.py cacheserver/storage.py vcl/exprcheck.py
    python tools/mutate.py --all                 # every module in MODULES
    python tools/mutate.py --show cacheserver/ranges.py   # also print each survivor's diff
    python tools/mutate.py --only '*_check_idle*' cacheserver/protocol.py   # some functions only
    python tools/mutate.py --report --show vmods/std.py    # the last run's results again, no mutating
    python tools/mutate.py --resume cacheserver/fsm.py     # go on with the last run after code changes
    python tools/mutate.py --sample 200 cacheserver/fsm.py # 200 random unchecked ones: a whole-module estimate

Each module is mutated in its own scratch copy of the tree (under $TMPDIR/cacheserver-mutate/, so the
worktree never gets a mutants/ directory) with only that module mutated and only the tests that cover
it run: the [tool.mutmut] table of pyproject.toml is the shared configuration, MODULES below picks the
tests per module. Not part of CI: a run takes minutes per module.

mutmut learns which test reaches which function by running the tests in-process, so code that only a
server subprocess runs (tests/test_cache_*.py start `cacheserver` as a child process) counts as "no
tests" and as not killed: a module scores well only with tests that call it directly.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the tests that cover it (pytest arguments), fast ones first
MODULES: dict[str, list[str]] = {
    "cacheserver/rfc2616.py": ["tests/test_rfc2616_ranges_bans.py"],
    "cacheserver/ranges.py": ["tests/test_rfc2616_ranges_bans.py"],
    "cacheserver/bans.py": ["tests/test_rfc2616_ranges_bans.py", "tests/test_cache_storage.py"],
    "cacheserver/storage.py": ["tests/test_mut_storage.py", "tests/test_vsl_storage_records.py", "tests/test_stored_http.py",
                               "tests/test_cache_storage.py", "tests/test_vmod_purge.py", "tests/test_cache_objects.py"],
    "vcl/exprcheck.py": ["tests/test_mut_exprcheck.py", "tests/test_vcl_errors.py", "tests/test_vcl_syntax.py",
                         "tests/test_vcl_parity.py", "tests/test_vcl_exec.py", "tests/test_vcl_vtc_cases.py",
                         "tests/test_vcl_variable_access.py", "tests/test_vcl_syntax_messages.py",
                         "tests/test_vcl_conversions.py", "tests/test_vcl_objects.py", "tests/test_vcl_std.py",
                         "tests/test_vcl_errors_unref.py", "tests/test_vcl_fuzz.py", "tests/test_vcl_docs.py"],
    "vmods/std.py": ["tests/test_mut_std.py", "tests/test_vmod_std.py", "tests/test_vcl_std.py",
                     "tests/test_vcl_vtc_cases.py", "tests/test_vcl_exec.py"],
    "vmods/directors.py": ["tests/test_mut_directors.py", "tests/test_vmod_directors.py", "tests/test_cache_directors.py",
                           "tests/test_vcl_objects.py"],
    # in-process servers (tests/inproc.py): the tests that run cacheserver as a child count for nothing here
    # (each module's mut tests drive the other too: the FSM runs inside the connection, and back)
    "cacheserver/fsm.py": ["tests/test_cache_fsm.py", "tests/test_cache_deliver.py", "tests/test_mut_fsm.py",
                           "tests/test_plain_hits.py", "tests/test_mut_protocol.py", "tests/test_mut_storage.py"],
    "cacheserver/protocol.py": ["tests/test_protocol.py", "tests/test_mut_protocol.py", "tests/test_http1_leniency.py",
                                "tests/test_counters_reference.py", "tests/test_cache_fsm.py", "tests/test_mut_fsm.py"],
    "cacheserver/deliver.py": ["tests/test_cache_deliver.py", "tests/test_plain_hits.py", "tests/test_resp_header_order.py",
                               "tests/test_cache_objects.py", "tests/test_mut_fsm.py", "tests/test_cache_fsm.py"],
}
# tests left out of a module's run: live re-checks against varnishd (minutes under load) that run none
# of the module's code, or whose recorded twin (same inputs, varnishd's answers stored) stays in and
# kills the same mutants
DESELECT: dict[str, list[str]] = {
    "vmods/directors.py": ["tests/test_vmod_directors.py::test_hash_and_shard_choose_what_varnishd_chooses_live"] + [
        f"tests/test_mut_directors.py::test_{name}_are_varnishds" for name in (
            "recorded_answers", "argument_checks", "init_settings", "simple_directors_answers",
            "shard_param_answers", "init_failures", "shard_debug_lines")] + [
        "tests/test_mut_directors.py::test_survivor_steps_are_varnishds"],
    "vmods/std.py": [f"tests/test_mut_std.py::test_{name}_varnishds" for name in (
        "recorded_values_are", "std_on_wire_headers_is", "healthy_answers_are", "ban_answers_are",
        "syntax_in_a_vcl_40_is", "collect_of_the_cached_object_is", "blobread_without_a_file_is")],
    "vcl/exprcheck.py": ["tests/test_mut_exprcheck.py::test_compiles_with_varnishd",
                         "tests/test_mut_exprcheck.py::test_every_case_is_what_varnishd_reports",
                         "tests/test_mut_exprcheck.py::test_call_notes_are_varnishds",
                         "tests/test_mut_exprcheck.py::test_marks_are_varnishds",
                         "tests/test_vcl_errors.py::test_every_case_is_what_varnishd_reports",
                         "tests/test_vcl_variable_access.py::test_recorded_messages_are_varnishds",
                         "tests/test_vcl_syntax_messages.py::test_recorded_messages_are_varnishds",
                         "tests/test_vcl_parity.py::test_recorded_verdicts_still_match_varnishd"],
}
FAST = ["cacheserver/rfc2616.py", "cacheserver/ranges.py", "cacheserver/bans.py"]
STATUS = re.compile(r"^\s*(\S+): (.+)$")


def scratch_copy(dest: Path) -> None:
    """The tracked and new files of the working tree (uncommitted edits included)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def configure(dest: Path, module: str) -> None:
    """pyproject.toml's [tool.mutmut], narrowed to one module and its tests."""
    text = (dest / "pyproject.toml").read_text()
    base = tomllib.loads(text)["tool"]["mutmut"]
    text = text[:text.index("[tool.mutmut]")]
    lines = ["[tool.mutmut]"]
    for key, value in base.items():
        if key == "pytest_add_cli_args":
            value = value + [arg for test in DESELECT.get(module, []) for arg in ("--deselect", test)]
        if key not in ("only_mutate", "pytest_add_cli_args_test_selection"):
            lines.append(f"{key} = {toml_value(value)}")
    lines.append(f"only_mutate = {toml_value([module])}")
    tests = [path for path in MODULES[module] if (dest / path).exists()]
    lines.append(f"pytest_add_cli_args_test_selection = {toml_value(tests)}")
    (dest / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")


def undecorate(path: Path) -> int:
    """Registration decorators (`@VMOD.func(...)`) moved below their functions, in the scratch copy.

    mutmut leaves every decorated function unmutated (a decorator runs at definition time), which
    would leave out all of vmods/std.py's functions. `@D(...)\ndef f` and `def f ...\nD(...)(f)` register
    the same function; registered after the definition, it is mutmut's trampoline that gets registered,
    so the mutant chosen at call time runs. Returns how many functions were rewritten.
    """
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    moves = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and len(node.decorator_list) == 1 \
                and isinstance(node.decorator_list[0], ast.Call):
            deco = node.decorator_list[0]
            moves.append((deco.lineno, node.lineno, node.end_lineno, ast.get_source_segment(text, deco), node.name))
    for first, def_line, end, deco, name in reversed(moves):   # from the bottom, so line numbers hold
        lines.insert(end, f"{deco}({name})\n")
        del lines[first - 1:def_line - 1]
    path.write_text("".join(lines))
    return len(moves)


def toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


# a mutant that crashes the test process (a None handed to libc) is caught as surely as a failure
CAUGHT = frozenset({"killed", "timeout", "segfault"})
NOT_KILLED = ("survived", "no tests")


def mutmut(dest: Path, env: dict[str, str], *args: str) -> None:
    """`python -m mutmut ARGS` in the scratch `dest`, its output appended as it comes to the scratch's
    mutmut.log (the progress, and why a run stopped early)."""
    with (dest / "mutmut.log").open("a") as log:
        subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=dest, env=env, stdout=log,
                       stderr=subprocess.STDOUT)


def resume(module: str, dest: Path, env: dict[str, str], children: int, survivors_too: bool) -> None:
    """Go on with an earlier run in `dest` after the code or the tests changed.

    The tree is copied again over the scratch, keeping mutmut's state and the scratch's [tool.mutmut]
    (a changed test selection would make mutmut forget every verdict). mutmut itself re-tests the
    mutants of the functions whose text changed and those never checked, and collects the new tests;
    with `survivors_too`, the survivors (and those with no test) are then re-tested by name, since a
    new test may kill them (without it the figure is a lower bound). A killed mutant of an unchanged
    function stays killed: its tests are still there.
    """
    pyproject = (dest / "pyproject.toml").read_text()
    scratch_copy(dest)
    (dest / "pyproject.toml").write_text(pyproject)
    undecorate(dest / module)
    # mutmut copies the packages' other files (vcl/grammar.lark ...) into mutants/ only on its
    # first run: a changed grammar would meet the new parser
    source_paths = tomllib.loads(pyproject)["tool"]["mutmut"]["source_paths"]
    for folder in source_paths:
        for src in (dest / folder).rglob("*"):
            if src.is_file() and src.suffix not in (".py", ".pyc") and "__pycache__" not in src.parts:
                target = dest / "mutants" / src.relative_to(dest)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    mutmut(dest, env, "run", "--max-children", str(children))
    if survivors_too:
        out = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=dest, env=env,
                             capture_output=True, text=True).stdout
        survivors = [m.group(1) for m in map(STATUS.match, out.splitlines()) if m and m.group(2) in NOT_KILLED]
        if survivors:
            mutmut(dest, env, "run", "--max-children", str(children), *survivors)


def sample(dest: Path, env: dict[str, str], children: int, size: int) -> None:
    """Test `size` mutants drawn at random from those the last run never checked (when the whole
    module would take hours): with the ones already checked they give an unbiased estimate of the
    whole module's score (`estimate`). The names drawn are kept in the scratch's sample.txt."""
    unchecked = sorted(key for meta in (dest / "mutants").rglob("*.meta")
                       for key, code in json.loads(meta.read_text())["exit_code_by_key"].items() if code is None)
    drawn = random.Random(len(unchecked)).sample(unchecked, min(size, len(unchecked)))
    with (dest / "sample.txt").open("a") as out:
        out.writelines(f"{name}\n" for name in drawn)
    mutmut(dest, env, "run", "--max-children", str(children), *drawn)


def estimate(dest: Path, verdicts: dict[str, str]) -> str | None:
    """The whole module's score from the mutants checked outside the sample, plus the sample's kill
    rate over every mutant left unchecked when it was drawn (the sample and those still unchecked),
    with a 95% interval (normal approximation, finite population)."""
    path = dest / "sample.txt"
    if not path.exists():
        return None
    drawn = set(path.read_text().split())
    sampled = [v for name, v in verdicts.items() if name in drawn and v != "not checked"]
    pool = len(sampled) + sum(1 for v in verdicts.values() if v == "not checked")   # drawn but not run too
    fixed = [v for name, v in verdicts.items() if name not in drawn and v not in ("not checked", "skipped")]
    n, total = len(sampled), len(fixed) + pool
    if not n or not total:
        return None
    rate = sum(v in CAUGHT for v in sampled) / n
    margin = 1.96 * pool * math.sqrt(rate * (1 - rate) / n * max(pool - n, 0) / max(pool - 1, 1))
    killed = sum(v in CAUGHT for v in fixed) + rate * pool
    return (f"estimate over all {total}: {100 * killed / total:.1f}% +- {100 * margin / total:.1f} "
            f"({n} of the {pool} unchecked drawn at random, {100 * rate:.1f}% of them caught)")


def run(module: str, workdir: Path, show: bool, children: int,
        only: list[str] | None = None, rerun: bool = True, resumed: bool = False,
        survivors_too: bool = False, sample_size: int = 0) -> tuple[int, int, dict[str, int], str | None]:
    dest = workdir / module.replace("/", "_")
    env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONDONTWRITEBYTECODE": "1"}
    if sample_size:
        sample(dest, env, children, sample_size)
    elif resumed and (dest / "mutants").is_dir():
        resume(module, dest, env, children, survivors_too)
    elif rerun:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        scratch_copy(dest)
        undecorate(dest / module)
        configure(dest, module)
        # --only: mutmut's own name filter (fnmatch on "package.module.x_function__mutmut_N")
        mutmut(dest, env, "run", "--max-children", str(children), *(only or []))
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=dest, env=env,
                         capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    survivors = []
    for line in out.splitlines():
        m = STATUS.match(line)
        if m:
            verdicts[m.group(1)] = m.group(2)
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
            if m.group(2) in NOT_KILLED:
                survivors.append((m.group(1), m.group(2)))
    killed = sum(n for status, n in counts.items() if status in CAUGHT)
    total = sum(n for status, n in counts.items() if status not in ("skipped", "not checked"))
    if show and survivors:
        changes = mutant_changes(dest / "mutants" / module)
        for name, status in survivors:
            print(f"  {status}: {name}\n    " + "\n    ".join(changes.get(name.rpartition(".")[2], ["?"])))
    return killed, total, counts, estimate(dest, verdicts)


def mutant_changes(mutated: Path) -> dict[str, list[str]]:
    """Each mutant's changed lines (-/+), read from mutmut's mutated copy of the module: one parse,
    where `mutmut show` takes seconds per mutant."""
    text = mutated.read_text()
    lines = text.splitlines()
    bodies = {node.name: lines[node.lineno - 1:node.end_lineno]
              for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    changes = {}
    for name, body in bodies.items():
        base, sep, _ = name.rpartition("__mutmut_")
        orig = bodies.get(f"{base}__mutmut_orig")
        if sep and orig is not None and not name.endswith("_orig"):
            diff = difflib.unified_diff(orig[1:], body[1:], lineterm="", n=0)
            changes[name] = [ln for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    return changes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"default: {' '.join(FAST)}")
    ap.add_argument("--all", action="store_true", help="every module in MODULES")
    ap.add_argument("--show", action="store_true", help="print each surviving mutant's change")
    ap.add_argument("--only", action="append", metavar="PATTERN",
                    help="mutate only the functions whose mutant names match (fnmatch), e.g. '*_check_idle*'")
    ap.add_argument("--report", action="store_true",
                    help="only report the last run's results (in --workdir), without mutating again")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the last run (in --workdir) after code or test changes: only changed "
                         "functions and mutants never checked are tested")
    ap.add_argument("--survivors", action="store_true",
                    help="with --resume: test the earlier survivors again too (slow: each runs every test)")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="test N of the last run's unchecked mutants (in --workdir), drawn at random, and "
                         "estimate the whole module's score from them")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2, help="parallel test processes")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cacheserver-mutate")
    args = ap.parse_args()
    modules = list(MODULES) if args.all else (args.modules or FAST)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        ap.error(f"not in MODULES: {' '.join(unknown)}")
    rows = []
    for module in modules:
        print(f"{module}: mutating ...", flush=True)
        killed, total, counts, whole = run(module, args.workdir, args.show, args.j, args.only,
                                           not args.report, args.resume, args.survivors, args.sample)
        score = 100.0 * killed / total if total else 0.0
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        rows.append(f"{module:28} {killed:4d}/{total:<4d} killed  {score:5.1f}%   ({detail})")
        if whole:
            rows.append(f"{'':28} {whole}")
        print("\n".join(rows[-2 if whole else -1:]), flush=True)
    print("\n".join(["", "score per module (killed, timed out or crashed / mutants):"] + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
