"""Run doppel.envs.register_envs right after `gymnasium` is imported (loaded by doppel-gymnasium.pth).

Gymnasium 1.x dropped its plugin entry points, so this is how `gymnasium.make("doppel/...")` works
with no other import. Until gymnasium is imported it costs one finder on `sys.meta_path`; it never
imports gymnasium itself, and it removes itself once gymnasium is loaded.
"""

from __future__ import annotations

import sys


class _AfterGymnasium:
    """A meta path finder (importlib's protocol) that answers only for `gymnasium`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)  # find the real spec without us
        spec = next((s for f in sys.meta_path if (s := _spec(f, fullname, path, target))), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            try:
                from doppel.envs import register_envs

                register_envs()
            except Exception as exc:  # noqa: BLE001 - never break `import gymnasium`
                print(f"doppel: could not register its Gymnasium envs: {exc}", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def _spec(finder, fullname, path, target):
    find = getattr(finder, "find_spec", None)
    return find(fullname, path, target) if find else None


def install() -> None:
    if "gymnasium" in sys.modules:
        from doppel.envs import register_envs

        register_envs()
    elif not any(isinstance(f, _AfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterGymnasium())


install()
