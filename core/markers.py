"""The pluggy markers, defined once for the ``snaptree`` project."""

import pluggy

PROJECT_NAME = "snaptree"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
