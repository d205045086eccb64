"""The README stays true to the code: every option is in its table, every pass in the architecture page."""
import pathlib

from corey_compile.options import OPTIONS
from corey_compile.passes import PIPELINE

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_lists_every_option_with_its_environment_variable():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for spec in OPTIONS:
        assert any(f"| `{spec.name}` |" in row and f"`{spec.env}`" in row for row in rows), spec.name


def test_the_architecture_page_and_the_passes_readme_name_every_pass():
    pages = [(ROOT / "docs" / "ARCHITECTURE.md").read_text(), (ROOT / "corey_compile" / "passes" / "README.md").read_text()]
    for step in PIPELINE:
        assert all(step.name in page for page in pages), step.name
