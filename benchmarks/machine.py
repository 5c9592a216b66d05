"""What the benchmark ran on: CPU, cores, memory, instruction sets, library versions, date, load."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

#: /proc/cpuinfo flags that decide CPU inference speed, and how the table names them.
CPU_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_bf16": "AMX BF16",
    "amx_int8": "AMX INT8",
}

PACKAGES = (
    "fastseg", "openvino", "onnxruntime", "torch", "ultralytics", "segment-anything", "mobilesam-mirror", "numpy",
)


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """``{"model": str | None, "flags": {table name: bool}}`` from the text of ``/proc/cpuinfo``."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": {name: flag in flags for flag, name in CPU_FLAGS.items()}}


def parse_meminfo(text: str) -> int | None:
    """Total RAM in bytes from the text of ``/proc/meminfo`` (None if absent)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024  # kB
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _openvino_cpu() -> dict[str, Any]:
    try:
        import openvino as ov

        core = ov.Core()
        return {
            "device_name": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "build": ov.get_version(),
        }
    except Exception as exc:  # noqa: BLE001 - a description must not fail the benchmark; the reason is kept
        return {"error": f"{type(exc).__name__}: {exc}"}


def sample_cpu(seconds: float = 1.0) -> dict[str, float] | None:
    """The CPU's use over ``seconds`` now, in % of all cores: ``busy`` (not idle, not waiting for I/O)
    and ``steal`` (taken by the hypervisor). None without psutil.

    On some virtual machines the load average counts kernel threads as runnable and stays high on an
    idle CPU (benchmarks/README.md); this is the measurement the report's warning trusts."""
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.cpu_times_percent(interval=seconds)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return {"busy": round(100.0 - idle, 1), "steal": round(float(getattr(times, "steal", 0.0)), 1)}


def busy_note(machine: dict[str, Any]) -> str | None:
    """A warning for the report when other work competed for the CPU as the run began, else None.

    Judged by the CPU's measured use where it was sampled (``cpu_at_start``), by the 1-minute load
    average otherwise."""
    cores = machine.get("usable_cores") or machine.get("logical_cores") or 1
    cpu = machine.get("cpu_at_start")
    if cpu is not None:
        if cpu["busy"] > 25.0:
            return (
                f"the CPU was {cpu['busy']:.0f}% busy ({cores} cores) in the second before the run began: other "
                "processes were competing for it, so these timings are noisier (and likely slower) than on an idle "
                "machine"
            )
        if cpu["steal"] > 5.0:
            return (
                f"the hypervisor took {cpu['steal']:.0f}% of the CPU in the second before the run began: timings on "
                "this virtual machine are noisier than on an idle one"
            )
        return None
    load = machine.get("load_average_at_start")
    if load and load[0] > 0.5:
        return (
            f"the 1-minute load average was {load[0]:.2f} on {cores} cores when the run began: other processes "
            "were competing for the CPU, so these timings are noisier (and likely slower) than on an idle machine"
        )
    return None


def describe_machine() -> dict[str, Any]:
    """The machine description written into every result."""
    cpuinfo_path = Path("/proc/cpuinfo")
    cpu: dict[str, Any] = {"model": None, "flags": {}}
    if cpuinfo_path.exists():
        cpu = parse_cpuinfo(cpuinfo_path.read_text(errors="replace"))
    meminfo = Path("/proc/meminfo")
    ram = parse_meminfo(meminfo.read_text()) if meminfo.exists() else None
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        if ram is None:
            ram = int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": cpu["model"] or platform.processor() or "unknown",
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": usable,
        "ram_bytes": ram,
        "flags": cpu["flags"],
        "openvino_cpu": _openvino_cpu(),
        "versions": {p: _version(p) for p in PACKAGES} | {"python": platform.python_version()},
        "os": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_at_start": load,
        "cpu_at_start": sample_cpu(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line for the table header, e.g. ``AMD EPYC, 2 cores, 23.4 GiB RAM, AVX-512 BF16 yes, ...``."""
    cores = machine.get("logical_cores")
    physical = machine.get("physical_cores")
    usable = machine.get("usable_cores")
    core_text = f"{cores} logical cores"
    if physical:
        core_text += f" ({physical} physical"
        core_text += f", {usable} usable)" if usable and usable != cores else ")"
    ram = machine.get("ram_bytes")
    ram_text = f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown"
    flags = machine.get("flags", {})
    shown = ("AVX2", "AVX-512", "AVX-512 BF16", "AVX-512 VNNI", "AMX BF16", "AMX INT8")
    flag_text = ", ".join(f"{name} {'yes' if flags.get(name) else 'no'}" for name in shown if name in flags)
    text = f"{machine.get('cpu_model', 'unknown CPU')}, {core_text}, {ram_text}"
    return text + (f"; {flag_text}" if flag_text else "")


def versions_line(machine: dict[str, Any]) -> str:
    versions = machine.get("versions", {})
    order = ("fastseg", "openvino", "torch", "onnxruntime", "ultralytics", "python")
    return ", ".join(f"{name} {versions[name]}" for name in order if versions.get(name))
