"""The agent's sensors, SMART and GPU sections: parsers on real outputs captured on real disks,
GPUs and machines by other projects (tests/data/hardware/README.md says where each comes from),
on this machine's own captures (no SMART disk, GPU or hwmon chip here) and on documents written
to the tools' documented formats, and that nothing is spawned when a tool is absent."""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading

import pytest

from central import document
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


# ------------------------------------------------------------------ captures from real hardware


def smart_capture(name):
    return capture(os.path.join("smartctl", name))


def test_smartctl_ata_captures(agent):
    # Seagate Barracuda 7200.12 (smartctl 7.3 via SAT): passes, with 304 reallocated sectors
    st = agent.parse_smartctl(smart_capture("smartctl_exporter-ST3500418AS_12.json"))
    assert st == {"device": "/dev/sda", "model": "ST3500418AS", "serial": "REDACTED", "passed": True,
                  "temperature": 33, "reallocated": 304, "pending": 0, "percentage_used": None,
                  "media_errors": None, "power_on_hours": 44668, "error": None}
    wd = agent.parse_smartctl(smart_capture("smartctl_exporter-WDC_WD20EFRX-68EUZN0_17.json"))
    assert (wd["model"], wd["passed"], wd["temperature"], wd["reallocated"], wd["pending"],
            wd["power_on_hours"]) == ("WDC WD20EFRX-68EUZN0", True, 34, 0, 0, 47657)
    # a failing Hitachi Deskstar behind a USB JMicron bridge (smartctl 7.1, exit status 216)
    failing = agent.parse_smartctl(smart_capture("scrutiny-smart-fail2.json"))
    assert failing == {"device": "/dev/sdc", "model": "Hitachi HDS721050DLE630", "serial": "MSK423Y20S3HBC",
                       "passed": False, "temperature": 25, "reallocated": 1975, "pending": 8,
                       "percentage_used": None, "media_errors": None, "power_on_hours": 65592, "error": None}


def test_smartctl_nvme_captures(agent):
    worn = agent.parse_smartctl(smart_capture("smartctl_exporter-nvme-null-INTEL_SSDPE2KX020T7-nvme6.json"))
    assert (worn["device"], worn["model"], worn["passed"], worn["temperature"], worn["percentage_used"],
            worn["media_errors"], worn["power_on_hours"], worn["reallocated"]) == (
        "/dev/nvme6", "INTEL SSDPE2KX020T7", True, 19, 75, 0, 49441, None)
    # critical warning 0x10 (volatile memory backup failed): smartctl's verdict is FAILED, exit status 8
    failed = agent.parse_smartctl(smart_capture("smartctl_exporter-nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json"))
    assert (failed["model"], failed["passed"], failed["temperature"], failed["percentage_used"],
            failed["media_errors"]) == ("SAMSUNG MZWLL3T2HAJQ-00005", False, 40, 0, 0)
    errors = agent.parse_smartctl(smart_capture("scrutiny-smart-nvme-failed.json"))
    assert (errors["model"], errors["passed"], errors["media_errors"], errors["percentage_used"],
            errors["temperature"]) == ("Samsung SSD 970 EVO 500GB", True, 7, 3, 35)


def test_smartctl_scsi_captures(agent):
    """smartctl 7.3 and later name a SCSI disk's model scsi_model_name, and a SCSI disk's
    reallocations are its grown defect list (no ATA attribute 5)."""
    seagate = agent.parse_smartctl(smart_capture("smartctl_exporter-SEAGATE_ST373453LC_26.json"))
    assert seagate == {"device": "/dev/sdb", "model": "SEAGATE ST373453LC", "serial": "REDACTED", "passed": True,
                       "temperature": 33, "reallocated": 260, "pending": None, "percentage_used": None,
                       "media_errors": None, "power_on_hours": 102880, "error": None}
    hitachi = agent.parse_smartctl(smart_capture("smartctl_exporter-HITACHI_H109060SESUN600G_10.json"))
    assert (hitachi["model"], hitachi["reallocated"], hitachi["temperature"], hitachi["power_on_hours"]) == (
        "HITACHI H109060SESUN600G", 0, 26, 22364)


def test_collect_smart_runs_what_a_real_scan_lists(agent, monkeypatch):
    runs = []

    def run(argv, timeout, **kw):
        runs.append(argv)
        name = ("scrutiny-smartctl_scan_simple.json" if "--scan" in argv
                else "smartctl_exporter-SEAGATE_ST373453LC_26.json")
        with open(os.path.join(HW, "smartctl", name)) as fh:
            return 0, fh.read()
    monkeypatch.setattr(agent, "_run", run)
    disks = agent.collect_smart("smartctl")
    assert runs[0] == ["smartctl", "--scan", "--json"]
    assert runs[1:] == [["smartctl", "--json", "-a", "-d", "scsi", "/dev/sd" + c] for c in "abcdefg"]
    assert len(disks) == 7 and disks[0]["model"] == "SEAGATE ST373453LC"


def test_smartctl_open_failure_capture(agent):
    disk = agent.parse_smartctl(smart_capture("scrutiny-smart-fail.json"))
    assert disk["passed"] is None and disk["model"] is None
    assert disk["error"] == "Smartctl open device: /dev/sda failed: \\\\.\\PhysicalDrive0: Open failed, Error=5"


NVIDIA_UNITS = (" %", " MiB", " W")


def nvidia_rows(agent, name):
    """The rows of an `nvidia-smi --query-gpu=<NVIDIA_FIELDS> --format=csv` capture the way
    `--format=csv,noheader,nounits` prints them: without the header line and the unit suffixes."""
    with open(os.path.join(HW, "nvidia-smi", name)) as fh:
        header, *rows = fh.read().splitlines()
    assert [h.split(" [")[0] for h in header.split(", ")] == list(agent.NVIDIA_FIELDS)
    out = []
    for row in rows:
        cells = []
        for cell in row.split(", "):
            for unit in NVIDIA_UNITS:
                if cell.endswith(unit):
                    cell = cell[:-len(unit)]
            cells.append(cell)
        out.append(", ".join(cells))
    return "\n".join(out) + "\n"


def test_nvidia_compute_apps(agent):
    # nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits
    # (its documented form: no public capture of it was found; see tests/data/hardware/README.md)
    apps = agent.parse_nvidia_apps(
        "GPU-3f1c, 1201, /opt/app, with comma/bin/train, 30000\n"
        "GPU-3f1c, 1202, python3, 512\n"
        "GPU-aa00, 77, [Not Found], [N/A]\n"
        "No running processes found\n"
        + "".join(f"GPU-bb00, {100 + i}, p{i}, {i}\n" for i in range(12)))
    assert apps["GPU-3f1c"] == [{"pid": 1201, "name": "/opt/app, with comma/bin/train", "memory_used": 30000 << 20},
                                {"pid": 1202, "name": "python3", "memory_used": 512 << 20}]
    assert "GPU-aa00" not in apps  # a MIG process without a memory figure
    assert [p["pid"] for p in apps["GPU-bb00"]] == [111, 110, 109, 108, 107, 106, 105, 104]  # the 8 largest
    assert agent.parse_nvidia_apps("") == {}


def test_nvidia_smi_captures(agent):
    h100 = agent.parse_nvidia_smi(nvidia_rows(agent, "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load.csv"))
    assert h100 == [{"vendor": "nvidia", "index": 0, "name": "NVIDIA H100 80GB HBM3",
                     "id": "GPU-00000000-0000-0000-0000-000000000000", "utilization": 100.0,
                     "memory_used": 19818 << 20, "memory_total": 81559 << 20, "temperature": 59.0,
                     "power": 631.95, "power_limit": 700.0}]
    mig = agent.parse_nvidia_smi(nvidia_rows(agent, "linux-x86_64__nvidia-h100-mig__590.48.01__idle.csv"))
    assert mig[0]["utilization"] is None  # MIG mode: utilization.gpu is [N/A]
    assert (mig[0]["memory_used"], mig[0]["temperature"], mig[0]["power"]) == (59 << 20, 42.0, 71.15)
    rtx = agent.parse_nvidia_smi(nvidia_rows(agent, "linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle.csv"))
    assert (rtx[0]["name"], rtx[0]["utilization"], rtx[0]["memory_total"], rtx[0]["power"],
            rtx[0]["power_limit"]) == ("NVIDIA GeForce RTX 4080 SUPER", 0.0, 16376 << 20, 26.2, 320.0)


NODE_SYS = os.path.join(HW, "node_exporter-sys")
PROCFS_SYS = os.path.join(HW, "procfs-sys")


def test_hwmon_and_thermal_captures(agent):
    doc = agent.collect_sensors(NODE_SYS)  # class/hwmon/* are symlinks into devices/, as in sysfs
    temps = doc["temperatures"]
    assert doc["available"] is True and len(temps) == 12
    assert temps[0] == {"name": "coretemp", "label": "Physical id 0", "celsius": 55.0, "high": 84.0,
                        "critical": 100.0}
    assert [t["label"] for t in temps[:5]] == ["Physical id 0", "Core 0", "Core 1", "Core 2", "Core 3"]
    assert [t["celsius"] for t in temps[:5]] == [55.0, 54.0, 52.0, 53.0, 50.0]
    assert {"name": "mt7996_phy0_2", "label": "temp1", "celsius": 57.0, "high": None, "critical": None} in temps
    assert temps[-1] == {"name": "thermal_zone0", "label": "cpu-thermal", "celsius": 12.4, "high": None,
                         "critical": None}
    assert doc["fans"] == [{"name": "nct6779", "label": "fan2", "rpm": 1098}]
    zones = agent.collect_sensors(PROCFS_SYS)["temperatures"]
    assert zones == [{"name": "thermal_zone0", "label": "bcm2835_thermal", "celsius": 49.9, "high": None,
                      "critical": None},
                     {"name": "thermal_zone1", "label": "acpitz", "celsius": -44.0, "high": None, "critical": None}]


def test_sensors_in_numeric_order(agent, tmp_path):
    """A many-core coretemp has temp2..temp30 and a machine hwmon0..hwmon12: listed (and cut at
    MAX_SENSORS) in numeric order, not hwmon10 before hwmon2."""
    sys = str(tmp_path)
    for chip, temp in (("hwmon10", "temp2"), ("hwmon2", "temp10"), ("hwmon2", "temp2")):
        write(sys + "/class/hwmon/%s/name" % chip, chip + "\n")
        write(sys + "/class/hwmon/%s/%s_input" % (chip, temp), "40000\n")
    for zone in ("thermal_zone11", "thermal_zone3"):
        write(sys + "/class/thermal/%s/temp" % zone, "30000\n")
    got = [(t["name"], t["label"]) for t in agent.collect_sensors(sys)["temperatures"]]
    assert got == [("hwmon2", "temp2"), ("hwmon2", "temp10"), ("hwmon10", "temp2"),
                   ("thermal_zone3", "thermal_zone3"), ("thermal_zone11", "thermal_zone11")]


def test_amdgpu_capture(agent):
    # card0: amdgpu Vega 10 (1002:687f), no hwmon directory in the capture; card1: i915, skipped
    assert agent.collect_amd_gpus(PROCFS_SYS) == [
        {"vendor": "amd", "index": 0, "name": "card0", "id": None, "utilization": 4, "memory_used": 1490378752,
         "memory_total": 8573157376, "temperature": None, "power": None, "power_limit": None}]


STAND_IN = """#!{python}
# Replays captured outputs: smartctl --scan --json, smartctl --json [-d TYPE] -a DEV, nvidia-smi --query-gpu
import os, sys
data = {data!r}
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "nvidia-smi":
    name = "nvidia-apps.txt" if any(a.startswith("--query-compute-apps=") for a in args) else "nvidia.txt"
elif "--scan" in args:
    name = "scan.json"
else:
    name = "disk-" + args[args.index("-d") + 1].replace(",", "-") + ".json" if "-d" in args else "disk.json"
with open(os.path.join(data, name)) as fh:
    sys.stdout.write(fh.read())
sys.exit(4 if name.startswith("disk") else 0)
"""


def test_api_all_from_captures_passes_the_central_normaliser(agent, tmp_path, monkeypatch):
    """A whole /api/all of a Collector reading the captured sysfs trees, with stand-in smartctl and
    nvidia-smi that replay captures (a MegaRAID scan: two disks behind /dev/bus/0), through the
    central's normaliser: every captured figure survives."""
    sys_dir = tmp_path / "sys"
    shutil.copytree(NODE_SYS, str(sys_dir), symlinks=True)
    shutil.copytree(os.path.join(PROCFS_SYS, "class", "drm"), str(sys_dir / "class" / "drm"))
    replay, bin_dir = tmp_path / "replay", tmp_path / "bin"
    replay.mkdir()
    bin_dir.mkdir()
    shutil.copy(os.path.join(HW, "smartctl", "scrutiny-smartctl_scan_megaraid.json"), str(replay / "scan.json"))
    shutil.copy(os.path.join(HW, "smartctl", "scrutiny-smart-megaraid0.json"), str(replay / "disk-megaraid-0.json"))
    shutil.copy(os.path.join(HW, "smartctl", "scrutiny-smart-megaraid1.json"), str(replay / "disk-megaraid-1.json"))
    rows = nvidia_rows(agent, "linux-x86_64__nvidia-l40s__595.80__load.csv")
    (replay / "nvidia.txt").write_text(rows)
    uuid = rows.split(",")[2].strip()
    # no capture of --query-compute-apps was found: its documented form, for the L40S above
    (replay / "nvidia-apps.txt").write_text(f"{uuid}, 4242, /usr/bin/python3, 1200\n")
    for tool in ("smartctl", "nvidia-smi"):
        path = bin_dir / tool
        path.write_text(STAND_IN.format(python=sys.executable, data=str(replay)))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    c = agent.Collector(sys=str(sys_dir))
    first = c.all()
    assert first["smart"]["reason"] == "first sample under way"
    for t in threading.enumerate():
        if t.name == "agent-slow-tool":
            t.join(30)
    doc = document.normalise(c.all())
    smart, gpus, sensors = doc["smart"], doc["gpus"], doc["sensors"]
    assert smart["available"] is True and [d["device"] for d in smart["disks"]] == [
        "/dev/bus/0 [megaraid,0]", "/dev/bus/0 [megaraid,1]"]  # one device name, two disks
    assert [(d["model"], d["passed"], d["temperature"], d["reallocated"]) for d in smart["disks"]] == [
        ("WD4000FYYX", True, 36, 0), ("WD4000FYYX", True, 36, 387)]
    assert {g["vendor"]: (g["name"], g["utilization"], g["memory_used"]) for g in gpus["gpus"]} == {
        "amd": ("card0", 4.0, 1490378752), "nvidia": ("NVIDIA L40S", 9.0, 1235 << 20)}
    assert gpus["gpus"][1]["power"] == 110.23 and gpus["gpus"][1]["power_limit"] == 350.0
    assert gpus["gpus"][1]["processes"] == [{"pid": 4242, "name": "/usr/bin/python3", "memory_used": 1200 << 20}]
    assert sensors["fans"] == [{"name": "nct6779", "label": "fan2", "rpm": 1098}]
    assert [t["celsius"] for t in sensors["temperatures"]][-1] == 12.4 and len(sensors["temperatures"]) == 12
