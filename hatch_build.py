"""The wheel's build hook: a built wheel carries grammars/ and templates/ inside the `layerdsl` package.

An editable install leaves them out and `layerdsl.resources` reads the checkout's folders: a `layerdsl/`
folder in site-packages would shadow the editable install's exact mapping of the package.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGED_FOLDERS = {"grammars": "layerdsl/grammars", "templates": "layerdsl/templates"}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"].update(PACKAGED_FOLDERS)
