"""The README's model tables and docs/efficiency.md are the output of
docs/readme_tables.py on the shipped profiles: a change to a profile or to the model
that moves a published figure fails here until the document is regenerated."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="module")
def tables(repo_root):
    spec = importlib.util.spec_from_file_location("readme_tables", repo_root / "docs" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TABLES


@pytest.mark.parametrize("name", ["paper", "chips", "kernels", "layouts"])
def test_the_readme_table_is_what_the_script_prints(tables, repo_root, name):
    readme = (repo_root / "README.md").read_text()
    assert tables[name]() in readme, f"README table {name!r} is stale: python docs/readme_tables.py {name}"


def test_the_efficiency_reference_is_what_the_script_prints(tables, repo_root):
    text = (repo_root / "docs" / "efficiency.md").read_text()
    assert tables["efficiency"]() in text, "docs/efficiency.md is stale: python docs/readme_tables.py efficiency"
    # every figure of every profile has a source named beside it
    for line in tables["efficiency"]().splitlines()[2:]:
        assert line.rstrip(" |").rsplit("|", 1)[-1].strip(), line
