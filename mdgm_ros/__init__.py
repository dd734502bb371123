"""mdgm_ros: multimodal deep generative models (PoE / MoE / MoPoE VAEs) for ROS 2 robots.

The model core, :mod:`mdgm_ros.core`, depends on torch and numpy only.
"""
__version__ = "0.1.0"
