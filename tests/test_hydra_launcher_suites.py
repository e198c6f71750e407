"""Hydra's own launcher test suites, as Hydra's joblib, Ray and Submitit launchers run them,
against the fnnlab launcher: in this process (n_jobs=1) and in two worker processes."""

from __future__ import annotations

import pytest
from hydra import version
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite


@pytest.fixture(autouse=True)
def _version_base_unspecified():
    """The suites' apps leave version_base unset, which means 1.1; a test before them may
    have set it (the conftest fixture puts Hydra's state back after each test)."""
    version.setbase("1.1")


LAUNCHERS = [[], ["hydra.launcher.n_jobs=2"]]
IDS = ["in-process", "2-workers"]


@pytest.mark.parametrize(
    ("launcher_name", "overrides"), [("fnnlab", o) for o in LAUNCHERS], ids=IDS
)
class TestFnnlabLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [({}, ["-m", "hydra/job_logging=disabled", "hydra/launcher=fnnlab", *o]) for o in LAUNCHERS],
    ids=IDS,
)
class TestFnnlabLauncherIntegration(IntegrationTestSuite):
    pass
