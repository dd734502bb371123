"""mdgm_ros: multimodal deep generative models (PoE / MoE / MoPoE VAEs) for ROS 2 robots.

The model core, :mod:`mdgm_ros.core`, depends on torch and numpy only. The generated interfaces
(``mdgm_ros.msg``, ``mdgm_ros.action``) sit next to this file after ``colcon build``; after
``make install`` (pip -e keeps this code in the source tree) they are in the venv's
``lib/mdgm_ros_interfaces/mdgm_ros``, which joins this package's path here.
"""
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

_interfaces = _Path(_sys.prefix) / "lib" / "mdgm_ros_interfaces" / __name__
if _interfaces.is_dir() and str(_interfaces) not in __path__:
    __path__.append(str(_interfaces))
