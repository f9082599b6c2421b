"""The code that runs inside the sandbox's own interpreter.

Everything in this package is imported by ``python -S -s`` before any namespace is entered, so it
uses the standard library only (no mergebench, no site-packages) and imports its siblings
relatively: the same files are also importable as ``mergebench.evaluation.sandbox._child`` for
tests and for building test programs.
"""
