"""Energy sensors the device-side bench reads: RAPL (sysfs counters) and Jetson's tegrastats.

No machine here has either, so both are fed their real formats: a powercap tree laid out as the
kernel lays it out, and a ``tegrastats`` on PATH that prints lines in the format Jetsons print
(samples below are in the formats of JetPack 6 on Orin and JetPack 4 on Nano)."""

from __future__ import annotations

import stat
import time

import pytest

from edgedistill.bench import energy

ORIN = ("11-28-2026 12:00:00 RAM 2345/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
        "CPU [12%@1510,8%@1510,5%@1510,3%@1510,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[624] VIC_FREQ 729 "
        "APE 174 CV0@46.5C CPU@48.1C SOC2@46.9C GPU@46.3C tj@48.1C "
        "VDD_IN 5012mW/4800mW VDD_CPU_GPU_CV 1195mW/1100mW VDD_SOC 1435mW/1400mW")
NANO = ("RAM 1234/3956MB (lfb 1x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [5%@1479,2%@1479,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@921 APE 25 PLL@24C CPU@27C "
        "POM_5V_IN 2091/2000 POM_5V_GPU 0/0 POM_5V_CPU 399/380")
RAILS_ONLY = "RAM 900/1900MB CPU [1%@102] VDD_CPU 300mW/300mW VDD_GPU 200mW/200mW"


def test_tegrastats_lines_give_the_input_rail():
    assert energy.tegrastats_power_mw(ORIN) == (5012.0, "VDD_IN")
    assert energy.tegrastats_power_mw(NANO) == (2091.0, "POM_5V_IN")
    assert energy.tegrastats_power_mw(RAILS_ONLY) == (500.0, "VDD_CPU+VDD_GPU")  # no input rail: the sum
    assert energy.tegrastats_power_mw("RAM 900/1900MB SWAP 0/0MB CPU [1%@102]") is None


def _fake_tegrastats(tmp_path, line: str):
    exe = tmp_path / "tegrastats"
    exe.write_text("#!/bin/sh\n# prints one line every --interval ms, as tegrastats does\n"
                   'ms=100; [ "$1" = "--interval" ] && ms=$2\n'
                   f"while true; do echo '{line}'; sleep $(awk \"BEGIN{{print $ms/1000}}\"); done\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_tegrastats_power_is_integrated_over_the_timed_window(tmp_path):
    meter = energy.TegrastatsMeter(str(_fake_tegrastats(tmp_path, ORIN)), interval_ms=50)
    assert meter.available
    meter.start()
    t0 = time.monotonic()
    time.sleep(1.0)
    elapsed = time.monotonic() - t0
    joules = meter.stop()
    assert joules == pytest.approx(5.012 * elapsed, rel=0.15)  # 5012 mW held for the window
    assert "VDD_IN" in meter.note and meter._proc.poll() is not None  # the sampler is stopped


def test_energy_meter_prefers_rapl_then_tegrastats(tmp_path, monkeypatch):
    rapl = energy.RaplMeter
    monkeypatch.setattr(energy, "RaplMeter", lambda: rapl(tmp_path / "no-powercap"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert energy.energy_meter() is None
    assert "no tegrastats" in energy.energy_meter.reason and "RAPL" in energy.energy_meter.reason
    (tmp_path / "bin").mkdir()
    _fake_tegrastats(tmp_path / "bin", NANO)
    assert isinstance(energy.energy_meter(), energy.TegrastatsMeter)


def test_rapl_counts_across_a_wrap(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a sub-zone (core): inside the package figure, not added
    for z in (zone, sub):
        z.mkdir()
        (z / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    (sub / "energy_uj").write_text("5\n")
    meter = energy.RaplMeter(tmp_path)
    assert meter.available and len(meter.zones) == 1
    meter.start()
    (zone / "energy_uj").write_text("4000\n")  # wrapped past max_energy_range_uj
    assert meter.stop() == pytest.approx(0.005)

