"""The docs stay current and portable: the configuration reference is generated from the code, the README is short
and starts with the two commands, no doc names a machine's absolute path, and every relative link resolves."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, REPO / "bench" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_configuration_reference_is_current():
    from pipelines.config_reference import config_reference
    path = REPO / "docs" / "configuration.md"
    assert path.exists() and path.read_text() == config_reference(), (
        "docs/configuration.md is out of date with the typed configs; regenerate it with "
        "`python -m pipelines.config_reference > docs/configuration.md`")


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; keep it to 150 (details belong in docs/)"
    start = lines.index("```bash")
    assert start < 10, "the README's first lines should be the `make demo` / `make test` commands"
    commands = [line for line in lines[start + 1:start + 3]]
    assert commands[0].startswith("make demo") and "#" in commands[0], commands
    assert commands[1].startswith("make test") and "#" in commands[1], commands


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_absolute_machine_paths(path):
    text = path.read_text()
    found = re.findall(r"(?<![\w.~-])/(?:work|root|tmp)/\S*", text)
    assert not found, f"{path.relative_to(REPO)} names absolute machine paths: {found[:5]} (use relative paths)"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)     # links inside code blocks are not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                                                    # URLs, mailto:, in-page anchors
        file = (path.parent / target.split("#")[0]).resolve()
        try:
            rel = file.relative_to(REPO).as_posix()
        except ValueError:
            broken.append(f"{target} (outside the repository)")
            continue
        if not file.exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"


REPO_PATH = re.compile(r"`((?:schemas|stages|pipelines|flows|tests|bench|docs)/[\w./*-]+)`")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_repository_paths_named_in_docs_exist(path):
    """A `pipelines/methods/lemma/prompts/lemma_judge.txt` in a doc names a file (or a glob) that is there."""
    missing = [p for p in REPO_PATH.findall(path.read_text()) if not list(REPO.glob(p.rstrip("/")))]
    assert not missing, f"{path.relative_to(REPO)} names paths that do not exist: {missing}"
