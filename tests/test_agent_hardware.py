"""The agent's sensors, SMART and GPU sections: parsers on real captures from this machine
(tests/data/hardware/README.md: no SMART disk, GPU or hwmon chip here) and on documents written
to the tools' documented formats, and that nothing is spawned when a tool is absent."""
from __future__ import annotations

import json
import os

import pytest

from tests.agentutil import DATA

pytestmark = pytest.mark.unit

HW = os.path.join(DATA, "hardware")


def capture(name):
    with open(os.path.join(HW, name)) as fh:
        return json.load(fh)


def test_smartctl_captures_of_this_machine(agent):
    assert capture("smartctl-scan-none.json").get("devices") is None  # nothing to sample here
    disk = agent.parse_smartctl(capture("smartctl-a-virtio-unsupported.json"))
    assert disk["passed"] is None and disk["temperature"] is None
    assert disk["error"] == "/dev/vda: Unable to detect device type"


def test_smartctl_ata_and_nvme_documents(agent):
    ata = agent.parse_smartctl({
        "device": {"name": "/dev/sda", "type": "sat"}, "model_name": "WDC WD20EFRX-68EUZN0",
        "serial_number": "WD-X", "smart_status": {"passed": False}, "temperature": {"current": 38},
        "power_on_time": {"hours": 40000},
        "ata_smart_attributes": {"table": [{"id": 5, "name": "Reallocated_Sector_Ct", "raw": {"value": 12}},
                                           {"id": 197, "name": "Current_Pending_Sector", "raw": {"value": 3}}]}})
    assert ata == {"device": "/dev/sda", "model": "WDC WD20EFRX-68EUZN0", "serial": "WD-X", "passed": False,
                   "temperature": 38, "reallocated": 12, "pending": 3, "percentage_used": None,
                   "media_errors": None, "power_on_hours": 40000, "error": None}
    nvme = agent.parse_smartctl({"device": {"name": "/dev/nvme0"}, "smart_status": {"passed": True},
                                 "nvme_smart_health_information_log": {"percentage_used": 7, "media_errors": 0,
                                                                       "temperature": 40}})
    assert nvme["percentage_used"] == 7 and nvme["media_errors"] == 0 and nvme["passed"] is True
    hostile = agent.parse_smartctl({"smart_status": {"passed": "yes"}, "temperature": {"current": -5},
                                    "ata_smart_attributes": {"table": [{"id": 5, "raw": {"value": True}}]}})
    assert hostile["passed"] is None and hostile["temperature"] is None and hostile["reallocated"] is None


def test_nvidia_smi_csv(agent):
    gpus = agent.parse_nvidia_smi("0, NVIDIA L40S, GPU-3f1c, 35, 1024, 46068, 41, 80.52, 350.00\n"
                                  "1, Tesla T4, GPU-aa, [N/A], 0, 15360, 33, [N/A], 70.00\nbroken line\n")
    assert gpus[0] == {"vendor": "nvidia", "index": 0, "name": "NVIDIA L40S", "id": "GPU-3f1c", "utilization": 35.0,
                       "memory_used": 1024 << 20, "memory_total": 46068 << 20, "temperature": 41.0, "power": 80.52,
                       "power_limit": 350.0}
    assert gpus[1]["utilization"] is None and gpus[1]["power"] is None and len(gpus) == 2


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def test_hwmon_thermal_and_amdgpu_sysfs(agent, tmp_path):
    sys = str(tmp_path / "sys")
    write(sys + "/class/hwmon/hwmon0/name", "coretemp\n")
    write(sys + "/class/hwmon/hwmon0/temp1_input", "45000\n")
    write(sys + "/class/hwmon/hwmon0/temp1_label", "Package id 0\n")
    write(sys + "/class/hwmon/hwmon0/temp1_crit", "100000\n")
    write(sys + "/class/hwmon/hwmon0/temp1_max", "80000\n")
    write(sys + "/class/hwmon/hwmon1/name", "nct6775\n")
    write(sys + "/class/hwmon/hwmon1/fan1_input", "1200\n")
    write(sys + "/class/hwmon/hwmon1/temp2_input", "garbage\n")
    write(sys + "/class/thermal/thermal_zone0/type", "x86_pkg_temp\n")
    write(sys + "/class/thermal/thermal_zone0/temp", "51000\n")
    write(sys + "/class/thermal/thermal_zone0/trip_point_0_type", "passive\n")
    write(sys + "/class/thermal/thermal_zone0/trip_point_0_temp", "90000\n")
    write(sys + "/class/thermal/thermal_zone0/trip_point_1_type", "critical\n")
    write(sys + "/class/thermal/thermal_zone0/trip_point_1_temp", "105000\n")
    doc = agent.collect_sensors(sys)
    assert doc["available"] is True and doc["reason"] is None
    assert doc["temperatures"] == [
        {"name": "coretemp", "label": "Package id 0", "celsius": 45.0, "high": 80.0, "critical": 100.0},
        {"name": "thermal_zone0", "label": "x86_pkg_temp", "celsius": 51.0, "high": None, "critical": 105.0}]
    assert doc["fans"] == [{"name": "nct6775", "label": "fan1", "rpm": 1200}]
    card = sys + "/class/drm/card0/device"
    write(card + "/vendor", "0x1002\n")
    write(card + "/gpu_busy_percent", "12\n")
    write(card + "/mem_info_vram_used", "1048576\n")
    write(card + "/mem_info_vram_total", "8589934592\n")
    write(card + "/hwmon/hwmon3/temp1_input", "60000\n")
    write(card + "/hwmon/hwmon3/power1_average", "25000000\n")
    write(sys + "/class/drm/card1/device/vendor", "0x8086\n")  # Intel: no utilisation in sysfs
    assert agent.collect_amd_gpus(sys) == [{"vendor": "amd", "index": 0, "name": "card0", "id": None,
                                            "utilization": 12, "memory_used": 1048576, "memory_total": 8589934592,
                                            "temperature": 60.0, "power": 25.0, "power_limit": None}]


def test_this_machine_has_none_and_nothing_is_spawned_without_the_tools(agent, monkeypatch, tmp_path):
    real = agent.collect_sensors("/sys")  # this VM has no hwmon chip or thermal zone: available false, and why
    assert real["available"] is bool(real["temperatures"] or real["fans"])
    assert (real["reason"] is None) is real["available"]
    runs = []
    monkeypatch.setattr(agent, "_run", lambda argv, timeout, **kw: runs.append(argv) or (0, ""))
    monkeypatch.setattr(agent, "_which", lambda program: None)
    c = agent.Collector()
    for _ in range(3):
        doc = c.all()
    assert doc["smart"] == {"available": False, "reason": "smartctl is not installed (smartmontools)",
                            "sampled_at": None, "disks": []}
    assert doc["gpus"]["available"] is False and "nvidia-smi is not installed" in doc["gpus"]["reason"]
    assert not [r for r in runs if r[0] in ("smartctl", "nvidia-smi")] and not any("smartctl" in r[0] for r in runs)


def test_slow_tools_run_in_their_own_thread_at_most_once_per_ttl(agent):
    import threading

    calls, release = [], threading.Event()

    def sample():
        calls.append(threading.current_thread().name)
        release.wait(5)
        return ["disk"]
    tool = agent.SlowTool(sample, ttl=3600)
    assert tool.get() is None  # the poll does not wait for the first sample
    release.set()
    for t in threading.enumerate():
        if t.name == "agent-slow-tool":
            t.join(5)
    assert tool.get()[1] == ["disk"] and tool.get()[1] == ["disk"]
    assert calls == ["agent-slow-tool"]  # once within the ttl
