"""The README's set-up commands and its Python example stay true."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines == ["pip install -e . && dode-run", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_readme_python_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["distilled"].shape == (16, 1, 8, 8)
    assert not scope["distilled"].equal(scope["base"])


def test_readme_names_every_report_artifact_and_every_doc():
    from dode.report.render import ARTIFACTS

    text = README.read_text()
    assert [a for a in ARTIFACTS if f"`{a}`" not in text] == []
    docs = sorted(p.name for p in (README.parent / "docs").glob("*.md"))
    assert [d for d in docs if f"(docs/{d})" not in text] == []
