"""What a real node does to this machine, and how it is undone: network, iptables, mounts, cgroups, sysctls.

The machine is shared (CI and later sessions reuse it), so everything the node creates must go away again, also
after a killed run. Before the node creates anything, ``Ledger.begin`` writes the machine's before-state to a fixed
place (``LEDGER``); ``cleanup`` undoes what the node did from that record and from fixed names (the bridge, the
kubelet's and kube-proxy's ``KUBE-*`` chains, the ``kubepods`` cgroups), and can run any number of times.
``machine_state`` is what the tests compare before and after.

Safety: pods and the host may only reach 127.0.0.0/8, the bridge and its pods. kube-proxy programs a DNAT rule
for every Service, including those whose endpoints are kwok's fake pod IPs, which exist nowhere: the kwok pod CIDR is
a blackhole route, the Service CIDR is routed to the bridge, and packets that enter from the bridge are routed by
a table of their own that knows only the bridge (everything else is a blackhole), so nothing a pod sends can
leave through the machine's own interface.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BRIDGE = "kubeinfer0"
BRIDGE_CIDR = "10.85.0.0/24"
NODE_IP = "10.85.0.1"
# The routing table and rule priority for packets that come in from the bridge.
BRIDGE_TABLE = 185
BRIDGE_RULE_PRIORITY = 1850
LEDGER = Path("/run/kubeinfer-real-node.json")
LOCK = Path("/run/kubeinfer-real-node.lock")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
NETNS_DIR = Path("/run/netns")
# libcni's cache of ADD results (containerd's CRI cannot move it); the node's entries are named after its CNI
# networks: NETWORK-CONTAINERID-IFNAME
CNI_RESULTS = Path("/var/lib/cni/results")
CNI_NETWORKS = ("kubeinfer-", "cni-loopback-")
# containerd's sockets (a unix socket path must be short; see realnode.SOCKET_DIR)
SOCKET_DIR = Path("/run/kubeinfer-node")
# Directories the kubelet, containerd and the CNI plugins use whatever their configuration says, and the sockets'.
FIXED_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/log/containers"), Path("/var/log/pods"),
              Path("/var/lib/kubelet"), NETNS_DIR, SOCKET_DIR)
# Kernel settings the kubelet (setupKernelTunables), kube-proxy and the CNI bridge plugin may change.
SYSCTL_DIRS = ("net/ipv4/conf/all", "net/ipv4/conf/default", "net/ipv6/conf/all", "net/ipv6/conf/default",
               "net/bridge", "net/netfilter", "vm", "kernel/keys")
SYSCTL_FILES = ("net/ipv4/ip_forward", "kernel/panic", "kernel/panic_on_oops")
# Values that change by themselves, not settings.
SYSCTL_VOLATILE = ("nf_conntrack_count", "stat_refresh", "drop_caches", "compact_memory", "stat_interval")
IPTABLES_FAMILIES = (("iptables", "iptables-save"), ("ip6tables", "ip6tables-save"),
                     ("iptables-legacy", "iptables-legacy-save"), ("ip6tables-legacy", "ip6tables-legacy-save"))
# Chains of the kubelet, kube-proxy, CNI plugins and the node's own (INGRESS_CHAIN).
NODE_CHAIN_PREFIXES = ("KUBE-", "CNI-", "KUBEINFER-")
# mangle/PREROUTING: a packet that comes in anywhere but the bridge or loopback, for an address not this machine's,
# is dropped. Pods need IP forwarding on (the CNI bridge plugin turns it on), which would also let this machine
# forward for anyone who sent it packets; with this chain it forwards only what pods send.
INGRESS_CHAIN = "KUBEINFER-INGRESS"
IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}
# podman's and buildah's own mounts and cgroups come and go with their containers (the image tests, other sessions
# on a shared machine): machine_state leaves them out.
OTHER_TOOLS_PATHS = ("/var/lib/containers/", "/run/containers/", "/run/libpod/")
OTHER_TOOLS_CGROUPS = {"libpod_parent", "machine.slice"}
OTHER_TOOLS_ENTRIES = ("podman", "netavark")


class NodeHostError(RuntimeError):
    """The machine is not in a state a real node can start from, or could not be restored."""


def run(*command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NodeHostError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _ip_json(*args: str) -> list[dict[str, Any]]:
    return json.loads(run("ip", "-j", *args).stdout or "[]")


# -- the before-state -------------------------------------------------------------------------------------------
def read_sysctls() -> dict[str, str]:
    """The kernel settings a node may change, as text (see SYSCTL_DIRS)."""
    values: dict[str, str] = {}
    paths = [Path("/proc/sys") / name for name in SYSCTL_FILES]
    for folder in SYSCTL_DIRS:
        with contextlib.suppress(OSError):
            paths += [p for p in (Path("/proc/sys") / folder).iterdir() if p.is_file()]
    for path in paths:
        if path.name in SYSCTL_VOLATILE:
            continue
        with contextlib.suppress(OSError):
            values[str(path.relative_to("/proc/sys"))] = path.read_text().strip()
    return values


def _iptables_rules(save: str) -> list[str]:
    """One iptables backend's rules without counters and comments (empty where the tool is missing)."""
    if shutil.which(save) is None:
        return []
    lines = run(save, check=False).stdout.splitlines()
    kept = []
    for line in lines:
        if line.startswith("#"):
            continue
        if line.startswith(":"):  # ":CHAIN POLICY [packets:bytes]"
            line = line.rsplit(" ", 1)[0]
        kept.append(line)
    return kept


def nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    return sorted(line.strip() for line in run("nft", "list", "tables", check=False).stdout.splitlines())


def _mount_points() -> list[str]:
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _ours_to_compare(path: str) -> bool:
    """False for what podman and buildah (the image tests, other sessions) make and remove on their own."""
    return not path.startswith(OTHER_TOOLS_PATHS) and Path(path).name not in OTHER_TOOLS_CGROUPS


def _cgroups() -> list[str]:
    """The first-level cgroups of every hierarchy (where the kubelet makes ``kubepods``)."""
    found = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        with contextlib.suppress(OSError):
            found += [str(child) for child in sorted(hierarchy.iterdir()) if child.is_dir()]
    return found


def _entries(folder: Path) -> list[str]:
    """A folder's entries, without podman's (its CNI results and network namespaces come and go on their own)."""
    try:
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(OTHER_TOOLS_ENTRIES))
    except OSError:
        return []


def machine_state() -> dict[str, Any]:
    """What the tests compare before and after a real node: links, addresses, routes, rules, iptables and nftables,
    mounts, cgroups, kernel settings and the directories the node's programs use (podman's and buildah's own mounts
    and cgroups left out)."""
    routes = [{k: r.get(k) for k in ("dst", "dev", "table", "type", "gateway", "prefsrc")}
              for r in _ip_json("route", "show", "table", "all")]
    routes += [{k: r.get(k) for k in ("dst", "dev", "table", "type", "gateway")}
               for r in _ip_json("-6", "route", "show", "table", "all")]
    return {
        "links": sorted(link["ifname"] for link in _ip_json("link", "show")),
        "addresses": sorted(f"{a['ifname']} {i['local']}/{i['prefixlen']}" for a in _ip_json("addr", "show")
                            for i in a.get("addr_info", [])),
        "routes": sorted(json.dumps(r, sort_keys=True) for r in routes),
        "rules": sorted(json.dumps(r, sort_keys=True) for r in _ip_json("rule", "show")),
        "iptables": {save: _iptables_rules(save) for _, save in IPTABLES_FAMILIES},
        "nft_tables": nft_tables(),
        "mounts": [m for m in _mount_points() if _ours_to_compare(m)],
        "cgroups": [c for c in _cgroups() if _ours_to_compare(c)],
        "sysctls": read_sysctls(),
        "dirs": {str(d): d.exists() for d in FIXED_DIRS},
        "dir_entries": {str(d): _entries(d) for d in (*FIXED_DIRS, CNI_RESULTS)},
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Readable lines for what changed between two machine states (empty when they are the same)."""
    lines = []
    for key in before:
        old, new = before[key], after.get(key)
        if old == new:
            continue
        if isinstance(old, dict):
            for name in sorted(set(old) | set(new or {})):
                if old.get(name) != (new or {}).get(name):
                    lines.append(f"{key} {name}: {_short(old.get(name))} -> {_short((new or {}).get(name))}")
        else:
            gone = [x for x in old if x not in new]
            added = [x for x in new if x not in old]
            lines.append(f"{key}: gone {gone}, added {added}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} lines: " + "; ".join(value)[:2000]
    return repr(value)


# -- the ledger: before-state and what the node started --------------------------------------------------------
@dataclass
class Ledger:
    """Written before the node creates anything; read by ``cleanup`` (also by a later run, after a kill)."""

    node_dir: str
    binaries: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, bool] = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)
    cni_results: list[str] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)
    # every process of the cluster (control plane and node), so that a killed run's can be stopped
    processes: dict[str, int] = field(default_factory=dict)
    kube_proxy_config: str = ""

    @classmethod
    def begin(cls, node_dir: Path, binaries: Path) -> Ledger:
        ledger = cls(node_dir=str(node_dir), binaries=str(binaries), sysctls=read_sysctls(),
                     dirs={str(d): d.exists() for d in FIXED_DIRS},
                     netns=_entries(NETNS_DIR), cni_results=_entries(CNI_RESULTS),
                     nft_tables=nft_tables())
        ledger.save()
        return ledger

    @classmethod
    def load(cls) -> Ledger | None:
        try:
            return cls(**json.loads(LEDGER.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        LEDGER.write_text(json.dumps(asdict(self), indent=1) + "\n")

    def started(self, name: str, pid: int) -> None:
        self.processes[name] = pid
        self.save()


@contextlib.contextmanager
def node_lock() -> Iterator[None]:
    """One real node per machine (the bridge, cgroups and iptables chains have fixed names). The lock file exists
    only while held: it is removed before it is unlocked, and a taker checks that it locked the file that is
    still there, so that nothing is left on the machine."""
    while True:
        handle = LOCK.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise NodeHostError(f"another real node runs on this machine (lock {LOCK} is held)") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(LOCK).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        handle.close()  # locked a file its holder removed meanwhile: take the new one
    try:
        yield
    finally:
        LOCK.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def lock_held() -> bool:
    try:
        handle = LOCK.open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# -- the network ------------------------------------------------------------------------------------------------
def check_network_free(kwok_pod_cidr: str, service_cidr: str) -> None:
    """Refuse to start where the node's networks are in use by anything else on the machine."""
    if BRIDGE in {link["ifname"] for link in _ip_json("link", "show")}:
        raise NodeHostError(f"link {BRIDGE} exists: a real node runs, or a killed one was not cleaned up "
                            "(python scripts/cluster/realnode.py cleanup)")
    ours = [ipaddress.ip_network(c) for c in (BRIDGE_CIDR, kwok_pod_cidr, service_cidr)]
    for route in _ip_json("route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst in ("default", "") or ":" in dst or route.get("table") == "local":
            continue
        network = ipaddress.ip_network(dst, strict=False)
        if any(network.overlaps(mine) for mine in ours):
            raise NodeHostError(f"route {dst} dev {route.get('dev')} overlaps the real node's networks {ours}")


def create_network(kwok_pod_cidr: str, service_cidr: str) -> None:
    """The CNI bridge with the node's address, and the routes that keep every packet on this machine."""
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{NODE_IP}/{BRIDGE_CIDR.split('/')[1]}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Host -> ClusterIP: the route is looked up before kube-proxy's DNAT, so it must exist; onto the bridge.
    run("ip", "route", "add", service_cidr, "dev", BRIDGE, "src", NODE_IP)
    # Host -> ClusterIP -> DNAT to a kwok pod IP, which exists nowhere: dropped here.
    run("ip", "route", "add", "blackhole", kwok_pod_cidr)
    # Packets from pods: the bridge, or nowhere (local addresses are found first, in the local table).
    run("ip", "route", "add", BRIDGE_CIDR, "dev", BRIDGE, "table", str(BRIDGE_TABLE))
    run("ip", "route", "add", "blackhole", "default", "table", str(BRIDGE_TABLE))
    run("ip", "rule", "add", "iif", BRIDGE, "lookup", str(BRIDGE_TABLE), "priority", str(BRIDGE_RULE_PRIORITY))
    forward_only_from_the_bridge()


def forward_only_from_the_bridge() -> None:
    """INGRESS_CHAIN, jumped to first in mangle/PREROUTING (before kube-proxy's DNAT)."""
    iptables = ("iptables", "-w", "-t", "mangle")
    run(*iptables, "-N", INGRESS_CHAIN)
    for match in (["-i", BRIDGE], ["-i", "lo"], ["-m", "addrtype", "--dst-type", "LOCAL"],
                  ["-m", "addrtype", "--dst-type", "BROADCAST"], ["-m", "addrtype", "--dst-type", "MULTICAST"]):
        run(*iptables, "-A", INGRESS_CHAIN, *match, "-j", "RETURN")
    run(*iptables, "-A", INGRESS_CHAIN, "-j", "DROP")
    run(*iptables, "-I", "PREROUTING", "1", "-j", INGRESS_CHAIN)


def route_of(address: str) -> str:
    """`ip route get` for an address as the host sends to it: its route, or the kernel's refusal
    ('RTNETLINK answers: Invalid argument' for a blackhole)."""
    done = run("ip", "route", "get", address, check=False)
    return (done.stdout or done.stderr).strip()


def route_from_bridge(address: str, source: str) -> str:
    """`ip route get` for a packet a pod (source on the bridge) sends to an address."""
    done = run("ip", "route", "get", address, "from", source, "iif", BRIDGE, check=False)
    return (done.stdout or done.stderr).strip()


def remove_network(kwok_pod_cidr: str) -> None:
    run("ip", "rule", "del", "priority", str(BRIDGE_RULE_PRIORITY), check=False)
    run("ip", "route", "flush", "table", str(BRIDGE_TABLE), check=False)
    run("ip", "route", "del", "blackhole", kwok_pod_cidr, check=False)
    links = {link["ifname"]: link for link in _ip_json("link", "show")}
    for name, link in links.items():
        if link.get("master") == BRIDGE:
            run("ip", "link", "del", name, check=False)
    if BRIDGE in links:
        run("ip", "link", "del", BRIDGE, check=False)  # its routes go with it


# -- iptables ---------------------------------------------------------------------------------------------------
def remove_node_chains() -> None:
    """Every KUBE-*/CNI-* chain and the jumps to them, in each iptables backend where they exist."""
    for tool, save in IPTABLES_FAMILIES:
        if shutil.which(tool) is None:
            continue
        table = ""
        jumps: list[tuple[str, str]] = []
        chains: list[tuple[str, str]] = []
        for line in run(save, check=False).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].startswith(NODE_CHAIN_PREFIXES):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A ") and not line.split()[1].startswith(NODE_CHAIN_PREFIXES) and any(
                    f"-j {p}" in line or f"-g {p}" in line for p in NODE_CHAIN_PREFIXES):
                jumps.append((table, line[3:]))
        for table, rule in jumps:
            run(tool, "-w", "-t", table, "-D", *shlex.split(rule), check=False)
        for table, chain in chains:
            run(tool, "-w", "-t", table, "-F", chain, check=False)
        for table, chain in chains:
            run(tool, "-w", "-t", table, "-X", chain, check=False)


def remove_new_nft_tables(before: Iterable[str]) -> None:
    """Tables iptables-nft created for the node (it cannot delete them itself) that are empty again."""
    for table in set(nft_tables()) - set(before):
        _, family, name = table.split()
        if family not in ("ip", "ip6") or name not in IPTABLES_TABLES:
            continue
        listing = run("nft", "list", "table", family, name, check=False).stdout
        if "jump" in listing or "goto" in listing or listing.count("chain ") > _builtin_chains(listing):
            continue  # something else put rules there since
        run("nft", "delete", "table", family, name, check=False)


def _builtin_chains(listing: str) -> int:
    return sum(1 for line in listing.splitlines() if line.strip().startswith("type "))


# -- processes, mounts, cgroups ---------------------------------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def node_processes(node_dir: Path) -> list[int]:
    """containerd and its shims (whose command lines name containerd's socket), the kubelet, kube-proxy."""
    return sorted(set(processes_mentioning(str(node_dir))) | set(processes_mentioning(str(SOCKET_DIR))))


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line names the node's folder (the kubelet, containerd, its shims, kube-proxy)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and text in _cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def cgroup_dirs(name: str = KUBEPODS) -> list[Path]:
    """Every ``name`` cgroup in every hierarchy, deepest first."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_ROOT.iterdir():
            top = hierarchy / name
            if top.is_dir():
                found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_processes(name: str = KUBEPODS) -> set[int]:
    pids: set[int] = set()
    for folder in cgroup_dirs(name):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
    return pids


def signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds (zombies count as gone)."""
    waiting = set(pids)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if _alive(pid)}
        if waiting:
            time.sleep(0.1)
    return sorted(waiting)


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_processes(pids: Iterable[int], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL what is left."""
    pids = list(pids)
    signal_all(pids, signal.SIGTERM)
    left = wait_gone(pids, timeout)
    signal_all(left, signal.SIGKILL)
    wait_gone(left, 5)


def kill_pods() -> None:
    """SIGKILL every process in the kubepods cgroups (the containers), until none is left."""
    for _ in range(5):
        pids = cgroup_processes()
        if not pids:
            return
        signal_all(pids, signal.SIGKILL)
        wait_gone(pids, 5)


def remove_cgroups(name: str = KUBEPODS, timeout: float = 10) -> list[Path]:
    """rmdir the cgroups bottom-up (a cgroup stays busy while its last tasks exit); those still busy are returned."""
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for folder in cgroup_dirs(name):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(folder)
        if not busy or time.monotonic() > deadline:
            return busy
        kill_pods()
        time.sleep(0.2)


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below any of the roots, deepest first."""
    prefixes = [str(root).rstrip("/") for root in roots]
    points = []
    for point in _mount_points():
        point = point.replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_all(*roots: Path) -> list[str]:
    """Unmount everything at or below the roots (repeated: a bind mount may be stacked); what stays is returned."""
    for _ in range(5):
        points = mounts_under(*roots)
        if not points:
            return []
        for point in points:
            if run("umount", point, check=False).returncode != 0:
                run("umount", "-l", point, check=False)
    return mounts_under(*roots)


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount (a local PersistentVolume bound into a pod's volume folder)."""
    if not path.exists() and not path.is_symlink():
        return
    left = unmount_all(path)
    if left:
        raise NodeHostError(f"cannot remove {path}: still mounted: {left}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def restore_sysctls(before: dict[str, str]) -> list[str]:
    """Write back every setting that differs from the before-state; the names written."""
    changed = []
    now = read_sysctls()
    for name, value in before.items():
        if now.get(name, value) != value:
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / name).write_text(value + "\n")
                changed.append(f"{name}={value}")
    return changed


# -- the whole cleanup ------------------------------------------------------------------------------------------
def cleanup(ledger: Ledger | None, kwok_pod_cidr: str, log: Any = print, whole_cluster: bool = True) -> None:
    """Undo everything a real node did to the machine; idempotent, with or without a ledger. ``whole_cluster``:
    also stop the cluster's other recorded processes (a killed run's control plane); a running cluster's own
    teardown stops those itself, after the node."""
    node_dir = Path(ledger.node_dir) if ledger else None
    with _timed("stopping processes", log):
        _stop_node_processes(ledger, node_dir, whole_cluster)
    with _timed("iptables", log):
        _remove_node_iptables(ledger)
    with _timed("cgroups", log):
        kill_pods()
        busy = remove_cgroups()
    if busy:
        log(f"cleanup: cgroups still busy: {busy}")
    _remove_netns(ledger)
    _remove_cni_results(ledger)
    if node_dir is not None:
        left = unmount_all(node_dir)
        if left:
            log(f"cleanup: still mounted: {left}")
    remove_network(kwok_pod_cidr)
    _remove_fixed_dirs(ledger)
    if ledger is not None:
        restored = restore_sysctls(ledger.sysctls)
        if restored:
            log(f"cleanup: kernel settings restored: {', '.join(restored)}")
        remove_new_nft_tables(ledger.nft_tables)
        if node_dir is not None:
            remove_tree(node_dir)
    LEDGER.unlink(missing_ok=True)


@contextlib.contextmanager
def _timed(what: str, log: Any, slow: float = 5.0) -> Iterator[None]:
    """Say so when a step of the cleanup is slow (a process that ignores SIGTERM, a busy cgroup)."""
    began = time.monotonic()
    yield
    if time.monotonic() - began > slow:
        log(f"cleanup: {what} took {time.monotonic() - began:.1f}s")


def _stop_node_processes(ledger: Ledger | None, node_dir: Path | None, whole_cluster: bool) -> None:
    """The kubelet first (it would restart containers), kube-proxy, the containers, then containerd and its shims
    (found by their command line naming the node's folder) and the cluster's other recorded processes (a killed
    run's control plane), each recorded one only while its command line still names the cluster's folder."""
    if ledger is None or node_dir is None:
        kill_pods()
        return
    cluster_dir = str(node_dir.parent)
    recorded = {name: pid for name, pid in ledger.processes.items() if cluster_dir in _cmdline(pid)}
    for name in ("kubelet", "kube-proxy"):
        if name in recorded:
            stop_processes([recorded.pop(name)])
    kill_pods()
    left = node_processes(node_dir)
    # a shim outlives SIGTERM (containerd would shut it down over its socket); its containers are gone by now
    shims = [pid for pid in left if "containerd-shim" in _cmdline(pid)]
    signal_all(shims, signal.SIGKILL)
    stop_processes([pid for pid in left if pid not in shims])
    wait_gone(shims, 5)
    if whole_cluster:  # in reverse order of their start: the API server before etcd (it writes its lease on exit)
        for pid in reversed(list(recorded.values())):
            stop_processes([pid])


def _remove_node_iptables(ledger: Ledger | None) -> None:
    if ledger and ledger.kube_proxy_config and ledger.binaries:
        kube_proxy = Path(ledger.binaries) / "kube-proxy"
        if kube_proxy.exists():
            run(str(kube_proxy), "--cleanup", f"--config={ledger.kube_proxy_config}", check=False, timeout=60)
    remove_node_chains()


def _remove_netns(ledger: Ledger | None) -> None:
    """The pods' network namespaces (containerd's CRI mounts them as /run/netns/cni-UUID): those made since the
    ledger and that no process is in any more (podman names its own the same way)."""
    if not NETNS_DIR.exists():
        return
    before = set(ledger.netns) if ledger else set()
    in_use = _netns_in_use()
    for entry in NETNS_DIR.iterdir():
        if entry.name in before or not entry.name.startswith("cni-"):
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_ino in in_use:
                continue
        unmount_all(entry)
        entry.unlink(missing_ok=True)


def _netns_in_use() -> set[int]:
    """The inodes of the network namespaces that processes are in."""
    used = set()
    for process in Path("/proc").iterdir():
        if process.name.isdigit():
            with contextlib.suppress(OSError):
                used.add(os.stat(process / "ns" / "net").st_ino)
    return used


def _remove_cni_results(ledger: Ledger | None) -> None:
    """libcni's cached results of the node's pods (killed without a CNI DEL), made since the ledger."""
    before = set(ledger.cni_results) if ledger else set()
    with contextlib.suppress(OSError):
        for entry in CNI_RESULTS.iterdir():
            if entry.name.startswith(CNI_NETWORKS) and entry.name not in before:
                entry.unlink(missing_ok=True)


def _remove_fixed_dirs(ledger: Ledger | None) -> None:
    """The fixed folders that did not exist before the node (without a ledger nothing says which: none)."""
    if ledger is None:
        return
    for folder in FIXED_DIRS:
        if not ledger.dirs.get(str(folder), False):
            remove_tree(folder)
