"""Where the fleet runs: a Dask scheduler the boards joined, or an embedded cluster on this machine.

A board joins with ``dask worker tls://scheduler:8786 --resources "orin-nx=1" --nthreads 1`` (docs/fleet.md):
its device kind is a Dask resource, and a task asks for one unit of it. Without a scheduler address, ``fleet``
starts a cluster of its own on 127.0.0.1 with one single-thread worker per local device kind (the CPU, and the
GPU where one is visible). The workers of that embedded cluster live in this process, so Ctrl-C leaves none behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ulsam_deploy import extras
from ulsam_deploy.errors import UserError

LOCAL_HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 10
NO_TLS_WARNING = ("The fleet's traffic is not encrypted and anyone who reaches the scheduler can run code on every "
                  "board; on any network that is not yours alone use TLS (--tls-ca, --tls-cert, --tls-key; see "
                  "docs/fleet.md).")


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of Dask's ``Security``: the CA that signed every party, and this client's certificate + key."""

    ca: Path
    cert: Path
    key: Path

    def security(self):
        from distributed.security import Security

        for path, what in ((self.ca, "--tls-ca"), (self.cert, "--tls-cert"), (self.key, "--tls-key")):
            if not path.is_file():
                raise UserError(f"{what} '{path}' is not a file; give the PEM file (docs/fleet.md shows how to make "
                                "them).")
        return Security(tls_ca_file=str(self.ca), tls_client_cert=str(self.cert), tls_client_key=str(self.key),
                        require_encryption=True)


def require_dask() -> None:
    extras.require("fleet", "distributed")


def local_kinds() -> list[str]:
    """The device kinds of this machine: ``cpu``, and ``gpu`` where the CUDA driver sees a GPU."""
    from ulsam_deploy.backends.trt.cuda import probe_cuda_driver

    kinds = ["cpu"]
    try:
        if probe_cuda_driver().gpus:
            kinds.append("gpu")
    except Exception:  # noqa: BLE001 - no driver: a CPU-only machine
        pass
    return kinds


def is_loopback(address: str) -> bool:
    host = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str, tls: TlsFiles | None) -> str:
    """``tcp://host:port`` or ``tls://host:port`` (a bare ``host:port`` gets the scheme TLS files imply)."""
    if "://" not in address:
        address = f"{'tls' if tls else 'tcp'}://{address}"
    parts = urllib.parse.urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
        raise UserError(f"--scheduler '{address}' is not a Dask scheduler address such as tls://10.0.0.5:8786.")
    if tls is not None and parts.scheme != "tls":
        raise UserError(f"--scheduler '{address}' is plain tcp but TLS files were given; use tls://{parts.netloc}.")
    if tls is None and parts.scheme == "tls":
        raise UserError(f"--scheduler '{address}' is TLS; give --tls-ca, --tls-cert and --tls-key too.")
    return address


@contextlib.contextmanager
def open_client(address: str | None = None, *, tls: TlsFiles | None = None,
                local: dict[str, dict] | None = None, processes: bool = False) -> Iterator[object]:
    """A ``distributed.Client``: connected to ``address``, or to an embedded cluster whose workers are ``local``
    (``{name: {kind: 1}}``; default: one per :func:`local_kinds`). ``processes``: embedded workers in their own
    processes (tests kill one); by default they run in this process."""
    require_dask()
    from distributed import Client

    if address is not None:
        security = tls.security() if tls is not None else None
        _probe(address, security)
        try:
            client = Client(address, security=security, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - whatever the far end did, one sentence
            raise _unreachable(address, exc) from None
        try:
            yield client
        finally:
            client.close()
        return
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    workers = local or {f"local-{kind}": {kind: 1} for kind in local_kinds()}
    options = {"nthreads": 1, "host": LOCAL_HOST, "dashboard": False}
    if processes:
        options["silence_logs"] = logging.CRITICAL
    spec = {name: {"cls": Nanny if processes else Worker, "options": {**options, "resources": resources}}
            for name, resources in workers.items()}
    with _quiet_dask():
        cluster = SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
            "host": LOCAL_HOST, "dashboard_address": None}}, silence_logs=logging.CRITICAL)
        try:
            client = Client(cluster, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


def _unreachable(address: str, exc: BaseException) -> UserError:
    return UserError(f"Could not reach a Dask scheduler at {address} ({type(exc).__name__}: {str(exc)[:160]}); start "
                     "it with 'dask scheduler' (docs/fleet.md), or check the address and the TLS files.")


def _probe(address: str, security) -> None:
    """Ask ``address`` who it is before a Client connects: something that is not a Dask scheduler (another service
    on the port, a proxy) is one sentence here, not a Client stuck in its retries or a huge allocation."""
    import asyncio

    from distributed.comm import connect

    async def identity():
        args = security.get_connection_args("client") if security is not None else {}
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), CONNECT_TIMEOUT_S)
        finally:
            await comm.close()

    try:
        with _quiet_dask():
            reply = asyncio.run(identity())
    except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS mismatch, garbage (MemoryError is one)
        raise _unreachable(address, exc) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise UserError(f"{address} answered, but not as a Dask scheduler; give the scheduler's address "
                        "(docs/fleet.md).")


@contextlib.contextmanager
def _quiet_dask():
    """Dask logs worker comings and goings at INFO/WARNING; the fleet reports them in its own words."""
    names = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker", "distributed.core")
    levels = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def workers_by_kind(client) -> dict[str, list[str]]:
    """Each device kind (a worker resource) -> the addresses of the workers that offer it."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: every worker is listed anyway
        info = client.scheduler_info()
    kinds: dict[str, list[str]] = {}
    for address, worker in info.get("workers", {}).items():
        for kind, amount in (worker.get("resources") or {}).items():
            if amount and amount > 0:
                kinds.setdefault(kind, []).append(address)
    return kinds


__all__ = ["LOCAL_HOST", "NO_TLS_WARNING", "TlsFiles", "check_address", "is_loopback", "local_kinds", "open_client",
           "require_dask", "workers_by_kind"]
