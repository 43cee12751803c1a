"""The README, docs/ and the package's docstrings are self-contained: they point only at files
and sections the repository has (the team's DESIGN.md is not shipped; the op contract is
docs/ops.md), and every relative link of the Markdown files resolves."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = ["README.md", "REPRODUCTION.md", *sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# what a user reads: the package (kmgan_ext/, with kmgan_ext.kernels from kernels/)
SOURCES = sorted(os.path.relpath(p, ROOT) for pattern in ("kmgan_ext/**/*.py", "kernels/*.py")
                 for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _anchors(path: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    with open(os.path.join(ROOT, path)) as f:
        heads = [ln.lstrip("#").strip() for ln in f if ln.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("path", MARKDOWN + SOURCES)
def test_no_pointer_outside_the_repository(path):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    assert "DESIGN.md" not in text, f"{path} sends readers to DESIGN.md, which is not in the repository"
    assert "Backend selection" not in text, f"{path} names a README section that does not exist"


@pytest.mark.parametrize("path", MARKDOWN)
def test_relative_links_resolve(path):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    here = os.path.dirname(path)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(here, file)) if file else path
        assert os.path.exists(os.path.join(ROOT, file)), f"{path}: link to missing {target}"
        if anchor and file.endswith(".md"):
            assert anchor in _anchors(file), f"{path}: link to missing section {target}"
