"""Everything is in pyproject.toml except one file setuptools cannot place from there: `cometlm-lm-eval.pth`,
which must sit at the top of site-packages (see src/_cometlm_lm_eval.py for what it does)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "cometlm-lm-eval.pth"


class BuildWithHarnessHook(build_py):
    """build_py that also copies the .pth file to the root of the wheel (regular and editable installs)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join("src", HOOK), os.path.join(self.build_lib, HOOK))
        if getattr(self, "editable_mode", False):
            # An editable wheel takes no files from build_lib, only those under the install folder it unpacks.
            unpacked = self.get_finalized_command("install").install_lib
            self.copy_file(os.path.join("src", HOOK), os.path.join(unpacked, HOOK))

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, HOOK)]

    def get_output_mapping(self):
        return {**super().get_output_mapping(), os.path.join(self.build_lib, HOOK): os.path.join("src", HOOK)}


setup(cmdclass={"build_py": BuildWithHarnessHook})
