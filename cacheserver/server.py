"""The server's shared state: parameters, counters, loaded VCLs, storage, listeners, programs."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cacheserver import vsc, vsl
from cacheserver.backends import live
from cacheserver.beconn import Pools
from cacheserver.counters import Counters
from cacheserver.loopreports import LoopReports
from cacheserver.params import Params
from cacheserver.probes import Probes
from cacheserver.programs import ProgramManager, default_search_dirs
from cacheserver.protocol import SOCKOPTS, ClientProtocol
from cacheserver.storage import Storage
from cacheserver.workers import WorkerPools
from vcl.compiler import CompiledVCL, compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Action, Context
from vmods.vnum import set_date_postel

log = logging.getLogger("cacheserver")


@dataclass
class ListenSpec:
    """One -a argument: [name=][host]:port."""

    name: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, index: int) -> ListenSpec:
        name = f"a{index}"
        if "=" in text.split(":", 1)[0]:
            name, text = text.split("=", 1)
        text = text.split(",", 1)[0]          # ",HTTP" / ",PROXY" protocol suffix
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"-a {text!r}: expected [address]:port")
        host = host.strip("[]")
        if not port.isdigit():
            raise ValueError(f"-a {text!r}: bad port {port!r}")
        return cls(name, host, int(port))


class VCLLoadError(Exception):
    """A VCL failed to load; str() is the report for the user (compiler output or vcl_init failure)."""


class Server:
    def __init__(self, params: Params | None = None, storage_bytes: int = 256 << 20,
                 identity: str | None = None, work_dir: Path | None = None) -> None:
        self.params = params or Params()
        self.counters = Counters()
        self.storage = Storage(storage_bytes, self.counters, self.params)
        self.storage_bytes = storage_bytes
        self.hostname = socket.gethostname()
        self.identity = identity or self.hostname
        self.work_dir = work_dir
        self.vcls: dict[str, CompiledVCL] = {}
        self.vcl_labels: dict[str, CompiledVCL] = {}
        self.vcl_files: dict[str, str] = {}     # name -> file it came from (for program lookup)
        self.active_vcl: CompiledVCL | None = None
        self.active_name: str | None = None
        self.sessions: set[ClientProtocol] = set()
        self.reqpool_fail = 0      # debug.reqpool.fail: bit i fails the i-th request task from now
        self.listen_specs: list[ListenSpec] = []
        self._listeners: list[asyncio.base_events.Server] = []
        self._sockets: list[socket.socket] = []
        self.programs = ProgramManager()
        self.backend_pools = Pools(self)      # kept-alive backend connections, per address
        self.workers = WorkerPools(self)      # MAIN.threads: varnishd's worker count for our tasks
        self.started_at = time.time()
        self._xid = 0
        self.probes = Probes()         # backend health polls, per loaded VCL
        self.readonly_params: set[str] = set()       # -r: param.set refuses these
        self.listen_endpoints: dict[str, str] = {}    # listen name -> its bound address, as varnishd names it
        self.vsl = vsl.NULL            # the shared log (open_log), a no-op until there is a work dir
        self.stats_dir: Path | None = None
        self._stats_timer: asyncio.TimerHandle | None = None

    def open_log(self, work_dir: Path) -> None:
        """Put the shared log (and the counters file) in the work directory, as varnishd's -n."""
        self.vsl = vsl.VslWriter(work_dir / vsl.FILE_NAME, int(self.params.vsl_space),
                                 int(self.params.vsl_reclen))
        self.vsl.params = self.params          # vsl_mask, read as records are written
        self.storage.vsl = self.vsl            # ExpKill
        self.probes.vsl = self.vsl             # Backend_health
        self.stats_dir = work_dir

    def publish_counters(self) -> None:
        """Rewrite the counters file now and every second after (cachestat, Prometheus read it)."""
        if self.stats_dir is None:
            return
        try:
            vsc.write(self, self.stats_dir)
        except OSError as exc:
            log.warning("cannot write counters in %s: %s", self.stats_dir, exc)
        self._stats_timer = asyncio.get_running_loop().call_later(vsc.INTERVAL, self.publish_counters)

    # -- transaction ids --------------------------------------------------------------------------

    def reqpool_fails(self) -> bool:
        """One attempt to schedule a request task (varnishd's Pool_Task for TASK_QUEUE_REQ): whether
        debug.reqpool.fail makes it fail, with varnishd's Debug record when it does."""
        bits = self.reqpool_fail
        self.reqpool_fail = bits >> 1
        if bits & 1:
            self.vsl.write(0, "-", [("Debug", "Failing due to reqpoolfail (next= 0x%x)" % (bits >> 1))])
            return True
        return False

    def next_xid(self) -> int:
        self._xid += 1
        return self._xid

    def set_xid(self, value: int) -> None:
        """debug.xid: the next transaction gets value + 1, as in varnishtest."""
        self._xid = value

    # -- bans ---------------------------------------------------------------------------------------

    def ban(self, expr: str | list[str]) -> None:
        """`ban` (CLI) and ban() (VCL): raises cacheserver.bans.BanError (a ValueError) when malformed."""
        self.storage.ban(expr)

    def configure_storage(self, specs: list[str]) -> None:
        """The -s arguments as given (`[name=]malloc,SIZE`, `Transient=malloc,SIZE`), before start."""
        self.storage.configure(specs)

    def storage_var(self, name: str, field: str) -> object:
        """storage.NAME.* in VCL (vcl.rtlib.storage_var asks here)."""
        return self.storage.storage_var(name, field)

    # -- VCL --------------------------------------------------------------------------------------

    def vcl_load(self, name: str, source: str, filename: str) -> CompiledVCL:
        """Compile and initialise a VCL; the active one is untouched when this fails."""
        if name in self.vcls:
            raise VCLLoadError(f"Already a VCL named {name}")
        include_dirs = [str(Path(filename).resolve().parent)] if filename and filename != "<inline>" else []
        try:
            compiled = compile_vcl(source, filename, include_dirs=include_dirs,
                                   err_unref=self.params.vcc_err_unref,
                                   storages=list(self.storage.stevedores),
                                   labels=set(self.vcl_labels),
                                   allow_inline_c=self.params.vcc_allow_inline_c)
        except VCLError as exc:
            raise VCLLoadError(str(exc)) from None
        for warning in compiled.warnings:
            log.warning("%s", warning)
        for spec in (getattr(compiled, "backends", None) or {}).values():
            live(spec)        # its health "changed" when it was created (VRT_AddDirector), not first used
        self.probes.prepare(name, compiled)         # backends have their initial health in vcl_init
        if self.vcl_trace_on():
            compiled.set_trace(True, name)
        ctx = Context(method="vcl_init", vcl=compiled, server=self,
                      server_hostname=self.hostname, server_identity=self.identity)
        action = compiled.init(ctx)
        self.vsl.write(0, "-", ctx.log)            # vcl_init's records belong to no transaction (vxid 0)
        if isinstance(action, Action) and action.name == "fail":
            self.probes.stop(name)
            msg = "; ".join(text for _, text in ctx.log) or "vcl_init failed"
            raise VCLLoadError(f"VCL \"{name}\" Failed initialization\nMessage:\n\t{msg}")
        compiled.name = name
        self._name_instances(compiled)
        self.vcls[name] = compiled
        if self.running:
            self.probes.start(name, compiled)
        self.vcl_files[name] = filename
        self.counters.n_vcl += 1
        self.counters.n_vcl_avail += 1
        if self.active_vcl is None:
            self.vcl_use(name)
        return compiled

    def vcl_trace_on(self) -> bool:
        """Whether VCL_trace records are wanted (vsl_mask lets them through)."""
        return "VCL_trace" not in vsl.masked_tags(self.params.vsl_mask)

    def apply_vcl_trace(self) -> None:
        """After vsl_mask changed: every VCL runs its traced or its plain subroutines accordingly."""
        on = self.vcl_trace_on()
        for name, compiled in self.vcls.items():
            if compiled.traced != on:
                compiled.set_trace(on, name)

    @staticmethod
    def _name_instances(compiled: CompiledVCL) -> None:
        """vmod objects that show their VCL name (directors) learn it from `new NAME = ...`."""
        instances = getattr(compiled, "instances", None)
        if callable(instances):
            instances = instances()
        for inst_name, inst in (instances or {}).items():
            if getattr(inst, "vcl_name", "") is None:
                inst.vcl_name = inst_name

    def vcl_use(self, name: str) -> None:
        compiled = self.vcls.get(name)
        if compiled is None:
            raise KeyError(f"No VCL named {name}")
        self.active_vcl = compiled
        self.active_name = name
        filename = self.vcl_files.get(name)
        self.programs.search_dirs = default_search_dirs(
            filename if filename and not filename.startswith("<") else None)

    def vcl_discard(self, name: str) -> None:
        if name not in self.vcls:
            raise KeyError(f"No VCL named {name} known.")
        if name == self.active_name:
            raise ValueError("Cannot discard active VCL program")
        compiled = self.vcls.pop(name)
        self.probes.stop(name)
        compiled.fini(Context(method="vcl_fini", vcl=compiled, server=self,
                              server_hostname=self.hostname, server_identity=self.identity))
        self.counters.n_vcl -= 1
        self.counters.n_vcl_avail -= 1
        # n_vcl_discard counts discarded VCLs still in use: ours are released at once

    def vcl_list(self) -> list[tuple[str, str, int]]:
        """(name, "active"/"available", busy) for each loaded VCL."""
        return [(name, "active" if name == self.active_name else "available", 0) for name in self.vcls]

    # -- listening --------------------------------------------------------------------------------

    def bind(self) -> None:
        """Open the listen sockets (port 0 gets a free port); accepting starts with start()."""
        for spec in self.listen_specs:
            infos = socket.getaddrinfo(spec.host or None, spec.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(self.params.listen_depth)
            sock.setblocking(False)
            self._sockets.append(sock)

    def listen_addresses(self) -> list[tuple[str, str, int]]:
        """(name, host, port) of each bound socket."""
        out = []
        for spec, sock in zip(self.listen_specs, self._sockets, strict=False):
            host, port = sock.getsockname()[:2]
            out.append((spec.name, host, port))
        return out

    @property
    def running(self) -> bool:
        return bool(self._listeners)

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("Child in state running")
        if self.active_vcl is None:
            raise RuntimeError("No VCL available")
        if not self._sockets:
            self.bind()
        for vcl_name, compiled in self.vcls.items():
            self.probes.start(vcl_name, compiled)
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(LoopReports(self.counters))
        await self.programs.start_pending()   # tinykvm.start(): async=false ones before we serve
        self.listen_endpoints = {}
        for spec, sock in zip(self.listen_specs, self._sockets, strict=False):
            host, port = sock.getsockname()[:2]
            endpoint = self.listen_endpoints[spec.name] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if self.vsl.wants("Debug"):
                # vca_sock_opt_set on the listen socket, as the child starts (vsl_mask +Debug)
                self.vsl.write(0, "-", [("Debug", f"sockopt: Setting {opt} for {spec.name}={endpoint}")
                                        for opt in SOCKOPTS])
            # A dup, so that stop() can close the listener and start() reuse the same port.
            listener = await loop.create_server(lambda name=spec.name: ClientProtocol(self, name),
                                                sock=sock.dup())
            self._listeners.append(listener)
        self.workers.start()
        # varnishd's child reads feature http_date_postel when it starts (VTIM_postel), not later
        set_date_postel("+http_date_postel" in self.params.feature.split(","))
        self.counters.mgt_child_start += 1
        self.child_started_at = time.time()   # MAIN.uptime counts from here, MGT.uptime from __init__

    async def stop(self) -> None:
        """Stop accepting and close every client connection (the CLI's `stop`)."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        if listeners:
            # varnishd's child takes its cache with it when it stops, and its backend connections
            for oc in self.storage.objects():
                self.storage.remove(oc)
            self.backend_pools.close()
        for session in list(self.sessions):
            session.close()

    async def close(self) -> None:
        await self.stop()
        self.probes.stop_all()
        self.workers.stop()
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        await self.programs.close()
        self.backend_pools.close()
        self.vsl.close()
        if self._stats_timer is not None:
            self._stats_timer.cancel()
            self._stats_timer = None
            try:
                vsc.write(self, self.stats_dir, stopped=True)
            except OSError:
                pass

