"""Package layout (everything else is in pyproject.toml).

``pipelines/``, ``configs/`` and ``data_cards/`` stay at the repository's top level and ship inside the
wheel as package data, under ``medvit/_resources/<folder>/``; :mod:`medvit.resources` reads them at run
time. pyproject.toml cannot map a folder outside the package into it, hence this file.
"""

from setuptools import find_namespace_packages, find_packages, setup

SHIPPED = ("pipelines", "configs", "data_cards")

# each shipped folder and its sub-folders (configs/trainer, ...) as data-only packages
resources = [f"medvit._resources.{d}" for d in SHIPPED]
resources += [f"medvit._resources.{d}.{sub}" for d in SHIPPED for sub in find_namespace_packages(d)]
setup(
    packages=[*find_packages(include=["medvit", "medvit.*"]), *resources],
    package_dir={f"medvit._resources.{d}": d for d in SHIPPED},
    package_data={"medvit": ["py.typed"], **{pkg: ["*.yaml", "*.yml"] for pkg in resources}},
)
