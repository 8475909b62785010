"""Builds the C++ core ``topoot_gpu._C`` through CMake (only a C++ compiler is needed), and ships the
CUDA sources (compiled at run time by NVRTC) and their host emulation (``topoot_gpu.testing``)
inside the package as ``topoot_gpu/cuda/``."""

import os
import subprocess
import sys
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_RELEASE={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.run(["cmake", str(ROOT), *config], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--target", "_C", "-j", jobs], cwd=build_dir, check=True)


class BuildPyWithCudaSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "topoot_gpu" / "cuda"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((ROOT / "csrc" / "cuda").glob("*.c*")):
            self.copy_file(str(src), str(target / src.name))


setup(
    ext_modules=[CMakeExtension("topoot_gpu._C")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithCudaSources},
)
