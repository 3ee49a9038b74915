"""Only what pyproject.toml cannot say: install doppel-gymnasium.pth beside the packages.

Gymnasium >= 1.0 loads no plugins, so this one-line .pth (`import doppel._gymnasium_hook`, an ImportError ignored) is what
makes `gymnasium.make("doppel/Synthetic-v0")` work without importing doppel first (doppel/envs.py).
It goes into the wheel's root (site-packages) for a normal install, and into the editable wheel
for `pip install -e .`. Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "doppel-gymnasium.pth"
HERE = Path(__file__).resolve().parent


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH), preserve_mode=False)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        inner = super()._select_strategy(*args, **kwargs)

        class WithPth:
            def __enter__(self):
                inner.__enter__()
                return self

            def __exit__(self, *exc):
                return inner.__exit__(*exc)

            def __call__(self, wheel, files, mapping):
                inner(wheel, files, mapping)
                wheel.writestr(PTH, (HERE / PTH).read_bytes())

        return WithPth()


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
