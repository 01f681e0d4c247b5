"""The wheel's build hook: copy the files the server needs beside its code into the package.

`alembic.ini`, `migrations/` and the built dashboard (`frontend/dist/`) stay at the top of the
checkout, their one source; a wheel carries them as `service/_resources/`, where service/resources.py
finds them. An editable install copies nothing: it runs from the checkout, which has them in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

RESOURCES = {
    "alembic.ini": "service/_resources/alembic.ini",
    "migrations": "service/_resources/migrations",
    "frontend/dist": "service/_resources/dashboard",
}


class ResourcesHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        root = Path(self.root)
        if not (root / "frontend" / "dist" / "index.html").is_file():
            raise RuntimeError(
                "the dashboard is not built, and the wheel must carry it: run `npm ci && npm run build` "
                "in frontend/ first (`make` does it)"
            )
        for source, target in RESOURCES.items():
            build_data["force_include"][str(root / source)] = target
