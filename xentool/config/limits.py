"""Bounds on what a config may be, kept apart from the grammar so that reading a file does
not import the parser.

Real configs are a few KiB and nest lists two or three deep.  Anything far beyond is a
mistake or an attack and is refused before pyparsing (which recurses) sees it.
"""

MAX_CONFIG_BYTES = 256 * 1024
MAX_NESTING = 32
MAX_ITEMS = 8192  # statements + list items (separators): bounds the parse to ~1 s


def script_escapes(script: str) -> bool:
    """A relative hotplug ``script=`` naming a file outside the Xen script directory.

    libxl runs ``/etc/xen/scripts/<script>`` as root, ``..`` and all, so ``../../tmp/x``
    runs whatever sits in /tmp.  xentool refuses it: a script outside the directory must be
    named by its absolute path, where the config's author can see what runs.
    """
    return not script.startswith("/") and ".." in script.split("/")
