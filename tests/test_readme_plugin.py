"""The README's plugin example works as written: installed as its own distribution, it becomes a column."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_plugin_example() -> tuple[str, str]:
    """The module and the pyproject snippet of the README's "Writing a plugin" section, verbatim."""
    section = (REPO / "README.md").read_text().split("## Writing a plugin", 1)[1]
    module = re.search(r"```python\n# my_merges/__init__.py\n(.*?)```", section, re.S).group(1)
    entry_points = re.search(r"```toml\n# pyproject.toml of your package\n(.*?)```", section, re.S).group(1)
    return module, entry_points


def test_the_readme_median_plugin_installs_and_runs_a_tiny_grid(bench, tmp_path, monkeypatch):
    module, entry_points = readme_plugin_example()
    package = tmp_path / "my-merges"
    (package / "my_merges").mkdir(parents=True)
    (package / "my_merges" / "__init__.py").write_text(module)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "my-merges"\nversion = "0.1"\n\n' + entry_points)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(package)], check=True)
    assert (site / "my_merges" / "__init__.py").is_file()

    monkeypatch.setenv("PYTHONPATH", str(site))
    listing = bench.run(sys.executable, "-m", "mergebench.cli", "plugins")
    listing.stdout.fnmatch_lines(["*my-merges*0.1*", "*median*other*"])
    out = tmp_path / "results.json"
    result = bench.runpytest_subprocess("-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "median",
                                        "--mb-search", "grid", "--mb-json", str(out))
    result.assert_outcomes(passed=len(json.loads(out.read_text())["cases"]))
    cases = json.loads(out.read_text())["cases"]
    assert cases and {c["method"] for c in cases} == {"median"}
    assert {c["params"]["scaling"] for c in cases} <= {0.5, 1.0}  # picked from the plugin's own grid
