"""Exit codes come from one table, :class:`droid_pipeline.core.exit_codes.ExitCode`: no module and
no bash driver spells one as a number, and the driver reads the very values Python holds."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.records import DriverExit

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "droid_pipeline"
TABLE = PACKAGE / "core" / "exit_codes.py"
DRIVER = PACKAGE / "execution" / "driver.sh"
BASH_SCRIPTS = (DRIVER, *sorted(REPO.glob("run_pipeline_*.sh")))

# A name that holds an exit code: code, rc, exit_code, returncode, EXIT_USAGE, _EPISODE_EXIT, ...
_CODE_NAME = re.compile(r"^_*(rc|code|exit)(_|$)|_(rc|code)$|exit_?code|returncode|^_*[A-Z_]*(EXIT|CODE)[A-Z_]*$")
# Codes of other protocols: HTTP.
_OTHER_CODES = {"status_code"}
# Calls whose first argument is an exit code.
_EXIT_CALLS = {"exit", "_exit", "SystemExit", "DriverExit"}
# Bash: an exit code typed as a number where a status is returned, compared, defaulted or matched.
_BASH_LITERAL = re.compile(r"\b(return|exit)\s+[0-9]+\b|\brc\s*(=|==|!=|<=|>=|<|>)\s*[0-9]+"
                           r"|\?\s*[0-9]+\s*:|:-[0-9]+\}|^\s*[0-9]+\)")


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _has_int(node: ast.AST) -> bool:
    return any(_is_int(child) for child in ast.walk(node))


def _name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name_of(node.value)
    if isinstance(node, ast.Call):
        return _name_of(node.func)
    return ""


def _holds_code(node: ast.AST) -> bool:
    """An expression that is an exit code: a code-like name, ``ExitCode.X`` or ``os.WEXITSTATUS(...)``."""
    name = _name_of(node)
    return (bool(_CODE_NAME.search(name)) and name not in _OTHER_CODES) or name == "WEXITSTATUS" or \
        (isinstance(node, ast.Attribute) and _name_of(node.value) == "ExitCode")


def _returns_codes(function: ast.FunctionDef | ast.AsyncFunctionDef, in_cli: bool) -> bool:
    """A function whose return value is an exit code: a ``main``, a command's int-returning helper,
    or one that returns a member of the table somewhere."""
    if function.name == "main" or (in_cli and function.returns is not None and "int" in ast.unparse(function.returns)):
        return True
    return any(isinstance(node, ast.Return) and node.value is not None and "ExitCode." in ast.unparse(node.value)
               for node in ast.walk(function))


def literal_exit_codes(source: str, *, in_cli: bool = False) -> list[str]:
    """``line: code`` of each place where ``source`` spells an exit code as a number."""
    tree = ast.parse(source)
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name_of(node.func) in _EXIT_CALLS and node.args and _has_int(node.args[0]):
            found.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _has_int(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [name for target in targets
                     for name in (target.elts if isinstance(target, ast.Tuple) else [target])]
            if any(map(_holds_code, names)):
                found.append(node)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            numbers = [side for side in sides if _is_int(side) or
                       (isinstance(side, (ast.Tuple, ast.List, ast.Set)) and any(map(_is_int, side.elts)))]
            codes = [side for side in sides if _holds_code(side)]
            # Another program's success is 0 by POSIX: ``result.returncode != 0`` reads no table of ours.
            posix_success = all(_name_of(c) == "returncode" for c in codes) and \
                all(_is_int(n) and n.value == 0 for n in numbers)  # type: ignore[attr-defined]
            if numbers and codes and not posix_success:
                found.append(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)) and \
                any(map(_holds_code, (node.left, node.right))) and any(map(_is_int, (node.left, node.right))):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _returns_codes(node, in_cli):
            found += [ret for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value is not None
                      and (_is_int(ret.value) or (isinstance(ret.value, ast.IfExp)
                                                  and (_is_int(ret.value.body) or _is_int(ret.value.orelse))))]
    lines = {node.lineno: ast.unparse(node).splitlines()[0] for node in sorted(found, key=lambda n: -n.col_offset)}
    return [f"{number}: {text}" for number, text in sorted(lines.items())]


def bash_literal_exit_codes(text: str) -> list[str]:
    """``line: text`` of each bash line (outside comments) that types an exit code as a number."""
    return [f"{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1)
            if not line.lstrip().startswith("#") and _BASH_LITERAL.search(line.split(" #", 1)[0])]


def test_no_module_spells_an_exit_code_as_a_number():
    spelt = [f"{path.relative_to(REPO)}:{hit}"
             for path in sorted(PACKAGE.rglob("*.py")) if path != TABLE
             for hit in literal_exit_codes(path.read_text(), in_cli=path.parent.name == "cli")]
    spelt += [f"{path.relative_to(REPO)}:{hit}" for path in sorted(REPO.glob("*.py"))
              for hit in literal_exit_codes(path.read_text())]
    assert not spelt, "exit codes typed as numbers instead of read from ExitCode:\n" + "\n".join(spelt)


def test_no_bash_driver_spells_an_exit_code_as_a_number():
    spelt = [f"{path.relative_to(REPO)}:{hit}" for path in BASH_SCRIPTS
             for hit in bash_literal_exit_codes(path.read_text())]
    assert not spelt, "exit codes typed as numbers instead of read from EXIT:\n" + "\n".join(spelt)


def test_the_checks_find_what_they_look_for():
    python = """
import os, sys
EXIT_DONE, EXIT_CARRIED_OVER = 0, 3
_EPISODE_EXIT = {0: "done"}
def main() -> int:
    return 2
def helper(failed: bool) -> int:
    if failed:
        return ExitCode.FAILED
    return 1 if failed else 0
def child(code: int) -> None:
    code = 3
    if os.WEXITSTATUS(code) in (0, 1):
        os._exit(code + 4)
    if rc != 143:
        sys.exit(130)
    raise SystemExit(2)
"""
    assert [hit.split(":")[0] for hit in literal_exit_codes(python)] == \
        ["3", "4", "6", "10", "12", "13", "14", "15", "16", "17"]
    clean = """
import sys
def main() -> int:
    result = run()
    if result.returncode != 0:
        return ExitCode.FAILED
    sys.exit(ExitCode.DONE)
    return len([1, 2])
t_exit = 0.5 if response.status_code == 429 else 2
"""
    assert literal_exit_codes(clean) == []
    assert literal_exit_codes("def run() -> int:\n    return 1\n", in_cli=True) == ["2: return 1"]
    bash = 'f() {\n  return 2\n}\nrc=0\n(( rc != 143 ))\necho $((rc == 0 ? 1 : rc))\n' \
           'x="${PLAN[exit_code]:-0}"\ncase "${rc}" in\n  3) ;;\nesac\n# return 1 in a comment\n'
    assert [hit.split(":")[0] for hit in bash_literal_exit_codes(bash)] == ["2", "4", "5", "6", "7", "9"]
    assert bash_literal_exit_codes('return "${EXIT[usage]}"\nsleep 10\nrc="${EXIT[done]}"\n') == []


def test_the_driver_reads_the_table_python_holds():
    script = ('source "$1"; find_python; load_exit_codes; '
              'for key in "${!EXIT[@]}"; do printf "%s=%s\\n" "${key}" "${EXIT[${key}]}"; done')
    out = subprocess.run(["bash", "-c", script, "bash", str(DRIVER)], env={"DROID_PYTHON": sys.executable,
                         "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=True).stdout
    read = dict(line.split("=") for line in out.splitlines())
    assert read == {name.lower(): str(int(code)) for name, code in ExitCode.__members__.items()}
    used = set(re.findall(r"EXIT\[([a-z_]+)\]", DRIVER.read_text()))
    assert used and used <= read.keys(), f"the driver names codes the table lacks: {sorted(used - read.keys())}"


def test_the_driver_exits_with_the_tables_usage_code():
    result = subprocess.run(["bash", str(DRIVER), "neither-pipeline"], env={"DROID_PYTHON": sys.executable,
                            "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == ExitCode.USAGE == 2 and "usage: bash driver.sh metadata|full" in result.stderr


def test_codes_print_as_numbers_in_files_and_messages():
    # The plan file and the summary carry codes as text; bash's `return` needs the number.
    assert DriverExit(ExitCode.INTERRUPTED).to_plan_file() == "action=exit\nexit_code=130\n"
    assert (str(ExitCode.WORKER_STOP), f"{ExitCode.TERMINATED}") == ("255", "143")
