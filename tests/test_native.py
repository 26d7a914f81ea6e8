"""The Rust → Python path: lumijax._native.build_info()."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from lumijax import native

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_version_is_the_workspace_version():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert native.build_info()["version"] == cargo["workspace"]["package"]["version"]


def test_built_in_release_mode():
    assert native.build_info()["profile"] == "release"


def test_target_features_match_the_kernel_cpu_flags():
    features = native.build_info()["target_features"]
    assert set(features) == {"avx2", "fma", "avx512_vnni"}
    flags = cpu_flags()
    if flags:  # Linux: the kernel's view of CPUID, an independent reference
        vnni = {"avx512f", "avx512bw", "avx512_vnni"} <= flags
        assert features == {"avx2": "avx2" in flags, "fma": "fma" in flags, "avx512_vnni": vnni}


def test_threads_follow_the_cpus_available_and_rayon_setting():
    assert native.build_info()["threads"] == len(os.sched_getaffinity(0))
    code = "from lumijax import native; print(native.build_info()['threads'])"
    env = dict(os.environ, RAYON_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
