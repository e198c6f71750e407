"""hydra/launcher=fnnlab: the class Hydra's plugin scan finds (implementation: _launcher.py)."""

from hydra_plugins.fnnlab_sweeper._launcher import FnnlabLauncher, FnnlabLauncherConf

__all__ = ["FnnlabLauncher", "FnnlabLauncherConf"]
