"""The files Herald needs beside its code: the alembic migrations with their `alembic.ini`, and the
built dashboard.

Their source is the checkout's top-level `migrations/`, `alembic.ini` and `frontend/dist/`. Building
the wheel copies them into the package as `service/_resources/` (pyproject.toml, `force-include`), so
an installed Herald finds them through `importlib.resources` wherever it runs from; a checkout (or an
editable install of one) has no `_resources/` and uses the top-level folders.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent

# The name of each resource inside the package, and where a checkout keeps it.
SOURCES = {
    "alembic.ini": Path("alembic.ini"),
    "migrations": Path("migrations"),
    "dashboard": Path("frontend", "dist"),
}


def path(name: str) -> Path:
    """Where resource `name` (a key of SOURCES) is: the installed package's copy when there is one,
    else the checkout's. The path may not exist (a checkout whose dashboard is not built): the caller
    says what is missing."""
    shipped = files("service").joinpath("_resources", name)
    # A wheel installs as plain files, so the resource is a real path (alembic needs one); a package
    # loaded from a zip would not be, and falls through to the checkout, which it does not have either.
    if isinstance(shipped, Path) and shipped.exists():
        return shipped
    return CHECKOUT / SOURCES[name]
