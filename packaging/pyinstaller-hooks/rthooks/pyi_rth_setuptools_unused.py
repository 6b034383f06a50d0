"""Runs in the full executable instead of PyInstaller's run-time hook for ``setuptools``.

setuptools ends up in the full build's module graph (the core build has none), and
PyInstaller's hook for it imports setuptools at every start to install its distutils shim:
about 0.2 s of CPU and 15 MB before the program's first line, in every ``--version`` and
every drain. Nothing the agent runs imports setuptools or distutils (the hook is their only
importer in the build's cross-reference), and a hook directory's own entry for a module takes
the place of PyInstaller's (see packaging/build-binary): this one does nothing.
"""
