"""Where the shipped config files are: config/ of a source checkout, else the installed share folder."""
from __future__ import annotations

from pathlib import Path

SOURCE_CONFIG = Path(__file__).resolve().parent.parent / "config"


def config_path(name: str) -> Path:
    """config/<name> of a source checkout, else share/mdgm_ros/config/<name> (colcon install), else the
    relative path."""
    here = SOURCE_CONFIG / name
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory  # installed with colcon
        return Path(get_package_share_directory("mdgm_ros")) / "config" / name
    except Exception:  # no ament index: fall back to the relative path
        return Path("config") / name
