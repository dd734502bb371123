"""Peak memory as the fleet benchmark measures it: VmHWM of the training process and of its workers,
not ru_maxrss (which a child inherits from its parent's peak across fork and exec)."""
import subprocess
import sys

CHILD = """
import json, resource, sys
from mdgm_ros.bench.memory import PeakMemory
with PeakMemory(period=0.05) as peak:
    worker = __import__("subprocess").run([sys.executable, "-c",
        "import time; x = bytearray(150 << 20); "
        "[x.__setitem__(i, 1) for i in range(0, len(x), 4096)]; time.sleep(0.5)"])
print(json.dumps({"own": peak.own_mb(), "children": peak.children_mb,
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_a_small_process_started_by_a_large_one_measures_as_itself_and_sees_its_workers_peak():
    import json
    parent = bytearray(300 << 20)                     # this process: over 300 MB resident
    for i in range(0, len(parent), 4096):
        parent[i] = 1
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ru_maxrss"] >= 300                 # inherited from this process: the old, wrong figure
    assert report["own"] < 200                        # the interpreter alone
    assert 150 <= report["children"] < 300            # the worker's 150 MB, seen while it ran
