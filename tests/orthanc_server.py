"""A throw-away Orthanc PACS for the tests: free local ports, JSON config and storage in a temp folder,
REST on 127.0.0.1 only; ``None`` when Orthanc is not installed or does not start (the tests then skip)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` (a listener started in a thread is ready)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until it holds, failing after ``timeout`` seconds: a test waits for what it needs, not a
    fixed time that a loaded machine may outlast."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"waited {timeout:g} s in vain"
        time.sleep(0.05)


@dataclass
class Orthanc:
    process: subprocess.Popen
    dicom_port: int
    http_port: int
    folder: Path

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, data: bytes, content_type: str = "application/dicom"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, folder: Path) -> None:
        for f in sorted(Path(folder).iterdir()):
            self.post("/instances", f.read_bytes())

    def series_by_uid(self) -> dict:
        """SeriesInstanceUID -> Orthanc's series record (with its instances' tags under 'instance_tags')."""
        out = {}
        for sid in self.get("/series"):
            s = self.get(f"/series/{sid}")
            out[s["MainDicomTags"]["SeriesInstanceUID"]] = s
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_orthanc(folder: Path, modalities: dict | None = None, extra: dict | None = None) -> Orthanc | None:
    """Start Orthanc with ``modalities`` ({name: [AET, host, port]}) as its known DICOM peers."""
    exe = shutil.which("Orthanc")
    if exe is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {"Name": "medrecon-test", "DicomAet": AET, "DicomPort": dicom_port, "HttpPort": http_port,
              "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
              "DicomServerEnabled": True, "DicomCheckCalledAet": True, "DicomModalities": modalities or {},
              "Plugins": [], "StableAge": 1, "LogExportedResources": False, **(extra or {})}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder)
    server = Orthanc(proc, dicom_port, http_port, folder)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            server.get("/system")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    server.stop()
    return None
