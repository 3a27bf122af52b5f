"""Human-readable text for discover and doctor (pure string building)."""

from __future__ import annotations

from sparkhelpers.discover.facts import HostFacts

_GIB_KIB = 1024 * 1024


def _gib(kib: int | None) -> str:
    return f"{kib / _GIB_KIB:.1f} GiB" if kib else "?"


def facts_text(facts: HostFacts, env: dict[str, str], problems: list[dict]) -> str:
    lines = [f"host        {facts.hostname or '?'}   kernel {facts.kernel or '?'}",
             f"gpu         {facts.gpu_name or 'none found'}   driver {facts.gpu_driver or '?'}",
             f"memory      {_gib(facts.mem_total_kib)} total, {_gib(facts.mem_available_kib)} available",
             f"management  {facts.management_iface or 'none'}   default route {facts.default_route_iface or 'none'}"]
    if facts.hcas:
        lines.append("")
        lines.append(f"{'HCA':<14}{'port':<6}{'state':<9}{'netdev':<16}{'IPv4':<20}{'MTU':<7}{'speed':<9}GID v2")
        for hca in facts.hcas:
            for port in hca.ports:
                nd = facts.netdevs.get(port.netdev)
                ips = ",".join(f"{a.ip}/{a.prefix}" for a in nd.ipv4) if nd and nd.ipv4 else "-"
                speed = f"{nd.speed_mbps // 1000}G" if nd and nd.speed_mbps else "-"
                own = {a.ip for a in nd.ipv4} if nd else set()
                gid = next((str(g.index) for g in port.roce_v2_ipv4_gids if g.ipv4 in own), "-")
                lines.append(f"{hca.name:<14}{port.port:<6}{port.state:<9}{port.netdev or '-':<16}{ips:<20}"
                             f"{(nd.mtu if nd else '-')!s:<7}{speed:<9}{gid}")
    else:
        lines.append("no RoCE/RDMA devices (/sys/class/infiniband is empty)")
    if facts.cabled_cages:
        lines.append("")
        lines.append(f"cabled port {', '.join(map(str, facts.cabled_cages))}: twins "
                     + ", ".join(f"{t.hca}/{t.netdev} ({'up' if t.usable else 'DOWN'})" for t in facts.twins))
    lines.append("")
    if env:
        lines.append("NCCL environment for this node:")
        lines += [f"  {k}={v}" for k, v in env.items()]
    else:
        lines.append("NCCL environment: none (no usable fabric)")
    if problems:
        lines.append("")
        lines.append("problems:")
        for p in problems:
            lines.append(f"  {p['severity']}: {p['message']}")
            if p.get("fix"):
                lines.append(f"    fix: {p['fix']}")
    return "\n".join(lines)


def checks_text(checks: list) -> str:  # list[Check]
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.node:<14} {c.name:<18} {c.message}")
        if c.status != "pass" and c.fix:
            lines.append(f"{'':<39}fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "warn", "fail")}
    lines.append(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")
    return "\n".join(lines)
