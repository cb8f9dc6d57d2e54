"""Thin entry points of the ``meshrec`` command: parse arguments, build objects, call the library."""
