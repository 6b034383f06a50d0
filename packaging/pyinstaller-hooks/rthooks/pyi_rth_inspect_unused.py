"""Runs in the executable instead of PyInstaller's own run-time hook for ``inspect`` (see packaging/build-binary).

PyInstaller's hook imports inspect and zipfile and reads the listing of base_library.zip at
every start, before the program's first line (about 30 ms and 4 MB, most of ``--version``),
so that ``inspect.getsourcefile`` can name frozen modules' files. The agent never asks inspect
for a source file (typer reads signatures only), and a hook directory's own entry for a
module takes the place of PyInstaller's: this one does nothing.
"""
