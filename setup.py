"""The compiled part of the runtime (everything else is in pyproject.toml): the entropy decoders' inner
loops, loaded with ctypes by sdlite.rangedecode."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sdlite._rangedecode", ["runtime/sdlite/_rangedecode.c"], extra_compile_args=["-O3"])])
