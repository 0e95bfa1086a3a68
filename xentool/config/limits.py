"""Bounds on what a config may be, kept apart from the grammar so that reading a file does
not import the parser.

Real configs are a few KiB and nest lists two or three deep.  Anything far beyond is a
mistake or an attack and is refused before pyparsing (which recurses) sees it.
"""

MAX_CONFIG_BYTES = 256 * 1024
MAX_NESTING = 32
MAX_ITEMS = 8192  # statements + list items (separators): bounds the parse to ~1 s
