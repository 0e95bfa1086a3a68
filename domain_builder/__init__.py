"""libxenctrl bindings (cffi, API mode) and a PV domain builder written in Python."""
