"""Where the test suite's CPU goes: runs pytest with the given arguments and samples every
process on the machine (Linux /proc) a few times a second, then prints the CPU-seconds each
kind of process used (test processes, Ray workers by actor class, raylets, drivers,
launchers, ...) beside the wall time. The suite is bound by the CPU on 2 cores, so this is
the table to cut from.

    .venv/bin/python -m benchmarks.suite_cpu -- tests/compute/test_ray_jobs.py -q

Processes shorter than the sampling interval are missed; the rest are counted from their
start (or from this script's start) to their last sample.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time

SAMPLE_EVERY_S = 0.3
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# (kind, a piece of the command line), first match wins; Ray workers go by their title.
KINDS = (
    ("gcs", "gcs_server"),
    ("raylet", "/raylet/raylet"),
    ("ray dashboard agent", "dashboard/agent.py"),
    ("ray dashboard", "dashboard/dashboard.py"),
    ("ray runtime-env agent", "runtime_env/agent"),
    ("ray monitor", "autoscaler"),
    ("ray client server", "ray.util.client.server"),
    ("ray start", "bin/ray start"),
    ("job driver", "agent.driver"),
    ("launcher", "app.launcher"),
    ("node agent", "-m agent"),
    ("test process", "pytest"),
    ("test process", "exec(eval(sys.stdin.readline()))"),  # a pytest-xdist worker
    ("postgres", "postgres"),
    ("chromium", "chrom"),
)


def kind_of(command: str) -> str:
    title = re.match(r"ray::(\S+)", command)
    if title:
        return "ray::" + title.group(1).split(".")[0]
    if "default_worker.py" in command:
        return "ray::IDLE"
    known = next((kind for kind, piece in KINDS if piece in command), None)
    if known:
        return known
    # Anything else by its program (and a Python program's script or module).
    words = [os.path.basename(word) for word in command.split()[:3] if word != "-m"]
    return "other: " + " ".join(words[:2])


def sample(seen: dict[tuple[str, str], list]) -> None:
    """Each live process's CPU-seconds so far, keyed by (pid, start time)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline_file:
                command = cmdline_file.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / TICKS
        key = (pid, fields[19])
        kind = kind_of(command)
        known = seen.setdefault(key, [kind, cpu_s, cpu_s])
        if known[0] == "ray::IDLE" and kind.startswith("ray::"):
            known[0] = kind  # an idle worker that became an actor
        known[2] = max(known[2], cpu_s)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    seen: dict[tuple[str, str], list] = {}
    sample(seen)
    for known in seen.values():  # count only what is used from here on
        known[1] = known[2]
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(SAMPLE_EVERY_S):
            sample(seen)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    started = time.monotonic()
    status = subprocess.call([sys.executable, "-m", "pytest", *args])
    wall_s = time.monotonic() - started
    done.set()
    thread.join()
    sample(seen)

    used: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for kind, first, last in seen.values():
        used[kind] += last - first
        count[kind] += last > first
    total = sum(used.values())
    cores = total / wall_s
    print(f"\n{total:,.0f} CPU-seconds in {wall_s:,.0f} s of wall time ({cores:.2f} cores)")
    print(f"{'CPU-s':>9}  {'processes':>9}  kind")
    for kind, cpu_s in used.most_common():
        if cpu_s >= 2:
            print(f"{cpu_s:9.1f}  {count[kind]:9d}  {kind}")
    sys.exit(status)


if __name__ == "__main__":
    main()
