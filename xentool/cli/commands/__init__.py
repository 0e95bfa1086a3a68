"""One module per verb group.

A module that implements verb ``foo-bar`` defines ``configure_foo_bar(parser)`` to add the
verb's options to its argparse sub-parser and ``cmd_foo_bar(args) -> int`` to run it. The CLI
imports only the module of the verb being run, so keep module-level imports light.
"""
