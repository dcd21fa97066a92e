"""Gate: no function in a package's ``src`` is longer than a reader can hold at once.

ruff's mccabe rule (C901, see ``pyproject.toml``) bounds the branches in a function; it does
not see a long, flat function (``run_training`` was 181 lines at complexity 9). This test
bounds the length and, when it fails, names every offender with its file, line and length.

Length is counted from the ``def`` line to the last line of the body, without the docstring:
Google-style docstrings with ``Args``/``Returns``/``Raises`` are documentation, not code to
follow, and counting them would push people to write less of it. Blank lines and comments
count: they are what a reader scrolls through. A nested function counts inside its parent
too. Decorators do not count.
"""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The shipped packages: the workspace members (testkit/, dev-only test support, is not one).
MEMBERS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
SRC_DIRS = [ROOT / member / "src" for member in MEMBERS]
MAX_LINES = 60


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        assert first.end_lineno is not None
        return first.end_lineno - first.lineno + 1
    return 0


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function and method in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                assert child.end_lineno is not None
                length = child.end_lineno - child.lineno + 1 - _docstring_lines(child)
                found.append((prefix + child.name, child.lineno, length))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def long_functions(src_dirs: list[Path], max_lines: int) -> list[str]:
    """One line per function over ``max_lines``, longest first: ``path:line name (N lines)``."""
    offenders: list[tuple[int, str, int, str]] = []
    for src in src_dirs:
        for path in sorted(src.rglob("*.py")):
            for name, line, length in function_lengths(path):
                if length > max_lines:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    offenders.append((-length, str(where), line, f"{where}:{line} {name} ({length} lines)"))
    return [text for *_, text in sorted(offenders)]


def test_the_gate_sees_every_package() -> None:
    # An empty list would make the real check pass without looking at anything.
    assert {path.parent.name for path in SRC_DIRS} >= {"shared", "data_worker", "gpu_worker", "orchestrator"}
    assert all(any(path.rglob("*.py")) for path in SRC_DIRS)


def test_the_gate_counts_code_not_docstrings(tmp_path: Path) -> None:
    def block(indent: int, lines: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(lines))

    doc = '"""Docs.\n\n' + "More.\n" * 30 + '"""\n'
    source = (
        "def short():\n" + indent_text(doc, 4) + "    return 1\n\n\n"
        "class C:\n    async def long(self):\n" + indent_text(doc, 8) + block(8, MAX_LINES) + "\n\n"
        "def outer():\n    def inner():\n" + block(8, MAX_LINES) + "    return inner\n"
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(source)
    found = {name: length for name, _, length in function_lengths(tmp_path / "src" / "m.py")}
    assert found == {
        "short": 2,
        "C.long": MAX_LINES + 1,
        "outer": MAX_LINES + 3,
        "outer.inner": MAX_LINES + 1,
    }
    assert [line.split(" ", 1)[1] for line in long_functions([tmp_path / "src"], MAX_LINES)] == [
        f"outer ({MAX_LINES + 3} lines)",
        f"C.long ({MAX_LINES + 1} lines)",
        f"outer.inner ({MAX_LINES + 1} lines)",
    ]


def indent_text(text: str, indent: int) -> str:
    return "".join(" " * indent + line if line.strip() else line for line in text.splitlines(True))


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    offenders = long_functions(SRC_DIRS, MAX_LINES)
    assert not offenders, f"{len(offenders)} functions over {MAX_LINES} lines:\n" + "\n".join(offenders)
