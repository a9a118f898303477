"""How much memory this process may still use: the bound that every size read from a file or a flag is checked
against before anything is allocated. Plain Python (no torch), below every module that sizes something."""

from __future__ import annotations


def _proc_kib(path: str, key: str) -> int | None:
    """The `key:` line of a /proc file (meminfo, self/status) in bytes, or None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory; under an address-space limit
    (`ulimit -v`), no more than what that limit leaves this process."""
    import os
    import resource

    have = _proc_kib("/proc/meminfo", "MemAvailable")
    if have is None:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        have = min(have, max(0, limit - (_proc_kib("/proc/self/status", "VmSize") or 0)))
    return have
