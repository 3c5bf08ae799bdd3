"""Energy per token where the machine has a sensor: RAPL package energy on x86 (powercap), Jetson
board power from ``tegrastats``; None, with the reason, elsewhere."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any


class RaplMeter:
    """RAPL package energy (/sys/class/powercap/intel-rapl:N/energy_uj), wrap-around handled."""

    note = "RAPL package energy (whole socket, other processes included)"

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self.zones: list[tuple[Path, int]] = []
        self.reason: str | None = None
        self._start: list[int] = []
        if not root.is_dir():
            self.reason = f"no {root} on this machine (no RAPL sensor exposed)"
            return
        for zone in sorted(root.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:
                continue  # sub-zones (core, uncore) are inside the package figure
            try:
                rng = int((zone / "max_energy_range_uj").read_text())
                int((zone / "energy_uj").read_text())
                self.zones.append((zone / "energy_uj", rng))
            except (OSError, ValueError) as e:
                self.reason = f"RAPL present but not readable ({e}); run as root or chmod energy_uj"
        if not self.zones and self.reason is None:
            self.reason = "no RAPL package zone under /sys/class/powercap"

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def _read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.zones]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        total = 0
        for (_, rng), a, b in zip(self.zones, self._start, self._read()):
            total += b - a if b >= a else b + rng - a
        return total / 1e6


# The rail that carries the whole module's input power, by Jetson generation (Orin, Xavier: VDD_IN;
# Nano, TX2: POM_5V_IN; AGX Thor/others: VIN_SYS_5V0). Without one, every rail reported is summed.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def tegrastats_power_mw(line: str) -> tuple[float, str] | None:
    """(instantaneous power in mW, what was read) from one tegrastats line; None without rails."""
    rails = {name: float(now) for name, now, _avg in _RAIL.findall(line)
             if not name.startswith(("RAM", "SWAP", "IRAM", "LFB", "EMC", "GR3D", "APE", "MTS"))}
    for name in _INPUT_RAILS:
        if name in rails:
            return rails[name], name
    if rails:
        return sum(rails.values()), "+".join(sorted(rails))
    return None


class TegrastatsMeter:
    """Jetson board power from ``tegrastats`` (its INA3221 rails), sampled every ``interval_ms``
    while the timed runs go, integrated over time (trapezoids between samples)."""

    def __init__(self, exe: str | None = None, interval_ms: int = 100) -> None:
        import shutil

        self.exe = exe or shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.reason = None if self.exe else "no tegrastats on PATH (not a Jetson)"
        self.note = "tegrastats"
        self._proc: Any = None
        self._samples: list[tuple[float, float]] = []
        self._thread: Any = None

    @property
    def available(self) -> bool:
        return self.exe is not None

    def _reader(self) -> None:
        for line in self._proc.stdout:
            got = tegrastats_power_mw(line)
            if got is not None:
                self._samples.append((time.monotonic(), got[0]))
                self.note = (f"tegrastats {got[1]} (board power, other processes included), "
                             f"sampled every {self.interval_ms} ms")

    def start(self) -> None:
        import subprocess
        import threading

        self._samples = []
        self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10 * self.interval_ms / 1e3 + 2
        while not self._samples and time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(self.interval_ms / 4e3)  # the timed runs start once power is being read
        self._t0 = time.monotonic()

    def stop(self) -> float | None:
        t1 = time.monotonic()
        time.sleep(self.interval_ms / 1e3 * 1.5)  # one more sample past the end
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - a stuck tegrastats must not sink the bench
            self._proc.kill()
        self._thread.join(timeout=2)
        pts = self._samples
        if len(pts) < 2:
            self.reason = f"tegrastats gave {len(pts)} power samples; need 2"
            return None
        joules = 0.0
        for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
            lo, hi = max(ta, self._t0), min(tb, t1)
            if hi > lo:  # the part of this interval inside the timed window
                joules += (pa + pb) / 2 / 1e3 * (hi - lo)
        return joules


def energy_meter() -> RaplMeter | TegrastatsMeter | None:
    """RAPL where the kernel exposes it, else tegrastats where it exists; None (with the
    reasons, as ``energy_meter.reason``) otherwise."""
    rapl = RaplMeter()
    if rapl.available:
        return rapl
    tegra = TegrastatsMeter()
    if tegra.available:
        return tegra
    energy_meter.reason = f"{rapl.reason}; {tegra.reason}"  # type: ignore[attr-defined]
    return None
