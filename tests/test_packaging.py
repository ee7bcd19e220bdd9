"""Import names: folders map to kubeinfer.* packages, and the repo's operator/ never shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys

from runtime_support import REPO


def test_kubeinfer_packages_map_to_the_top_level_folders() -> None:
    import kubeinfer.clients
    import kubeinfer.operator
    import kubeinfer.runtime

    assert kubeinfer.runtime.__file__.startswith(str(REPO / "runtime"))
    assert kubeinfer.clients.__file__.startswith(str(REPO / "clients"))
    assert kubeinfer.operator.__file__.startswith(str(REPO / "operator"))


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    """pyproject lists packages by hand; one left out is missing from the image's non-editable install only."""
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    folders = {name: REPO / path for name, path in tool["package-dir"].items()}
    found = {name + "".join("." + part for part in init.parent.relative_to(root).parts)
             for name, root in folders.items() for init in root.rglob("__init__.py")
             if ".cache" not in init.parts and "tests" not in init.parts}
    assert found - listed == set()


def test_the_operator_folder_does_not_shadow_the_standard_library() -> None:
    probe = "import operator, sys; print(operator.__file__); print(operator.itemgetter(1)([5, 7]))"
    # -S: no site, so nothing preloads the stdlib module; the checkout's root comes first on sys.path.
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {probe}"],
                            capture_output=True, text=True, cwd=REPO, check=True)
    path, value = result.stdout.split()
    assert path.endswith("/operator.py") and not path.startswith(str(REPO))
    assert value == "7"
