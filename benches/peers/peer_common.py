"""Output helpers shared by the peer drivers: the single strict-JSON line, peak memory,
package versions."""

import json
import math
import resource


def peak_rss_mb():
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result, stdout):
    """The single JSON line on the real stdout (strict JSON: non-finite -> null)."""
    stdout.write(json.dumps(finite_or_null(result), allow_nan=False) + "\n")
    stdout.flush()


def finite_or_null(x):
    """Strict JSON: a diverged run's NaN / inf metrics become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_null(v) for v in x]
    return x


def dist_version(name):
    """Installed version of a distribution, or None."""
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None
