"""pip/venv install of the Python package (`make install`); on robots `colcon build` uses
CMakeLists.txt (ament_cmake)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mdgm_ros"


def _version() -> str:
    with open(f"{PACKAGE}/__init__.py", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__")


setup(
    name=PACKAGE,
    version=_version(),
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.md")),
        (f"share/{PACKAGE}/models/default", glob("models/default/*")),
    ],
    # The import needs that pip may resolve. PyTorch is deliberately not listed: it comes from the
    # platform (a Jetson's JetPack build, a CUDA or CPU build chosen by the user) or, on a workstation
    # or CI, from requirements.txt, which pins it exactly; a requirement here would make pip replace a
    # platform build. rclpy, the message packages and OpenCV come from the ROS install (package.xml).
    install_requires=["numpy", "safetensors", "PyYAML"],
    zip_safe=True,
    maintainer="mdgm_ros developers",
    maintainer_email="mdgm-ros@example.org",
    description="Multimodal deep generative models (PoE/MoE/MoPoE VAEs) for ROS 2 sensor fusion",
    license="Apache-2.0",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "mdgm-ros = mdgm_ros.cli:main",
            "fusion_node = mdgm_ros.ros.fusion_node:main",
            "synthetic_streams = mdgm_ros.ros.synthetic_streams:main",
            "sim_robot_node = mdgm_ros.ros.sim_robot_node:main",
            "trainer_node = mdgm_ros.ros.trainer_node:main",
        ],
    },
)
