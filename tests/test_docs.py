"""The documentation builds, strictly, and says what the CRD and the README promise.

``mkdocs build --strict`` (what `make docs` runs) fails on a broken link or anchor between pages, a page left out of
the nav, or a hook that raises; docs/hooks.py generates the InferenceService reference from the CRD during the build,
so the built page is checked against the CRD itself. The README stays a front page: short, the two commands first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "inferenceservices.kubeinfer.io.yaml"
README = REPO / "README.md"
README_MAX_LINES = 220


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
               "--site-dir", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def spec_fields() -> list[str]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return list(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def test_the_docs_build_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    pages = {p.relative_to(REPO / "docs").with_suffix("") for p in (REPO / "docs").rglob("*.md")}
    for page in pages:
        built = site / ("" if page.name == "index" else page) / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"


def test_the_reference_page_has_every_spec_field(site: Path) -> None:
    page = (site / "reference" / "inferenceservice" / "index.html").read_text()
    fields = spec_fields()
    assert len(fields) > 5
    missing = [name for name in fields if f"<code>spec.{name}</code>" not in page]
    assert missing == [], f"the generated reference lacks {missing}"


def test_the_reference_page_is_in_the_nav() -> None:
    config = (REPO / "mkdocs.yml").read_text()
    assert re.search(r"^\s*- [^:\n]+: reference/inferenceservice\.md$", config, re.M)
    assert re.search(r"^\s*- docs/hooks\.py", config, re.M)


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert lines[0].startswith("# ")
    fence = next(i for i, line in enumerate(lines) if line.startswith("```"))
    intro = lines[1:fence]
    assert not any(line.startswith("#") for line in intro), "only the title and the intro come before the commands"
    assert any(line.strip() for line in intro), "the README says what kubeinfer is before its commands"
    block = lines[fence + 1:lines.index("```", fence + 1)]
    commands = [line.split("#")[0].strip() for line in block if line.strip()]
    assert commands == ["make serve", "make test"], block
    for target in ("serve", "test"):
        assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), re.M), f"no make target {target}"


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s-]+", "-", text).strip("-")


def test_the_readme_links_resolve() -> None:
    """The README's relative links point at files that exist and, with an anchor, at a heading there."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", README.read_text())
    relative = [(path, anchor) for path, anchor in links if "://" not in path]
    assert relative, "the README links to the docs"
    for path, anchor in relative:
        target = REPO / path
        assert target.is_file(), f"README.md links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {path}#{anchor}: no such heading"
