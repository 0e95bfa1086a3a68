"""A libxl_domain_config in xl's s-expression format (``output_format="sxp"`` in xl.conf):
what xl 4.17's printf_info_sexp prints of a PV guest, from the retrieved JSON document."""

from __future__ import annotations

#: libxl_disk_backend by value (phystype is printed as the number).
_DISK_BACKENDS = {"unknown": 0, "phy": 1, "tap": 2, "qdisk": 3, "standalone": 4}
_UINT32_DEFAULT = (1 << 32) - 1  # LIBXL_MAX_GRANT_DEFAULT


def _s(v: object) -> str:
    """A C string as printf's %s shows it (NULL: "(null)")."""
    return "(null)" if v is None else str(v)


def _defbool(v: object) -> str:
    return v if isinstance(v, str) and v in ("True", "False") else "<default>"


def _signed32(v: object, default: int = 0) -> int:
    n = v if isinstance(v, int) and not isinstance(v, bool) else default
    return n - (1 << 32) if n >= 1 << 31 else n


def _dict(v: object) -> dict[str, object]:
    return v if isinstance(v, dict) else {}


def _dicts(v: object) -> list[dict[str, object]]:
    return [d for d in v if isinstance(d, dict)] if isinstance(v, list) else []


def _mac(v: object) -> str:
    parts = str(v).split(":") if isinstance(v, str) else []
    if len(parts) != 6:
        return "000000000000"
    return "".join(f"{int(p, 16):02x}" for p in parts)


def format_sxp(domid: int, config: dict[str, object], uuid: str) -> str:
    """One domain's ``(domain ...)`` block; ``uuid`` is the hypervisor's (xl reads it
    there, not from the configuration)."""
    c = _dict(config.get("c_info"))
    b = _dict(config.get("b_info"))
    pv = _dict(b.get("type.pv"))
    ctype = c.get("type", "pv")
    lines = [
        "(domain", f"\t(domid {domid})", "\t(create_info)",
        f"\t(hvm {1 if ctype == 'hvm' else 0})",
        f"\t(hap {_defbool(c.get('hap'))})", f"\t(oos {_defbool(c.get('oos'))})",
        f"\t(ssidref {_signed32(c.get('ssidref'))})", f"\t(name {_s(c.get('name'))})",
        f"\t(uuid {uuid})",
    ]
    if c.get("pool_name") is not None:
        lines.append(f"\t(cpupool {c['pool_name']})")
    lines += [
        f"\t(xsdata {'contains data' if c.get('xsdata') else '(null)'})",
        f"\t(platformdata {'contains data' if c.get('platformdata') else '(null)'})",
        "\t(build_info)",
        f"\t(max_vcpus {_signed32(b.get('max_vcpus'))})",
        f"\t(max_grant_frames {_signed32(b.get('max_grant_frames'), _UINT32_DEFAULT)})",
        f"\t(max_maptrack_frames "
        f"{_signed32(b.get('max_maptrack_frames'), _UINT32_DEFAULT)})",
        f"\t(tsc_mode {b.get('tsc_mode', 'default')})",
        f"\t(max_memkb {_memkb(b.get('max_memkb'))})",
        f"\t(target_memkb {_memkb(b.get('target_memkb'))})",
        f"\t(nomigrate {_defbool(b.get('disable_migrate'))})",
    ]
    if ctype == "pv" and b.get("bootloader") is not None:
        lines.append(f"\t(bootloader {b['bootloader']})")
        args = b.get("bootloader_args")
        if isinstance(args, list):
            lines.append("\t(bootloader_args" + "".join(f" {a}" for a in args) + ")")
    lines += [
        "\t(image", "\t\t(linux 0)",
        f"\t\t\t(kernel {_s(b.get('kernel'))})",
        f"\t\t\t(cmdline {_s(b.get('cmdline'))})",
        f"\t\t\t(ramdisk {_s(b.get('ramdisk'))})",
        f"\t\t\t(e820_host {_defbool(pv.get('e820_host'))})",
        "\t\t)", "\t)",
    ]
    for d in _dicts(config.get("disks")):
        lines += [
            "\t(device", "\t\t(tap",
            f"\t\t\t(backend_domid {_signed32(d.get('backend_domid'))})",
            f"\t\t\t(frontend_domid {domid})",
            f"\t\t\t(physpath {_s(d.get('pdev_path'))})",
            f"\t\t\t(phystype {_DISK_BACKENDS.get(str(d.get('backend', 'unknown')), 0)})",
            f"\t\t\t(virtpath {_s(d.get('vdev'))})",
            f"\t\t\t(unpluggable {_signed32(d.get('removable'))})",
            f"\t\t\t(readwrite {_signed32(d.get('readwrite'))})",
            f"\t\t\t(is_cdrom {_signed32(d.get('is_cdrom'))})",
            "\t\t)", "\t)",
        ]
    for n in _dicts(config.get("nics")):
        lines += ["\t(device", "\t\t(vif"]
        if n.get("ifname") is not None:
            lines.append(f"\t\t\t(vifname {n['ifname']})")
        lines += [
            f"\t\t\t(backend_domid {_signed32(n.get('backend_domid'))})",
            f"\t\t\t(frontend_domid {domid})",
            f"\t\t\t(devid {_signed32(n.get('devid'))})",
            f"\t\t\t(mtu {_signed32(n.get('mtu'))})",
            f"\t\t\t(model {_s(n.get('model'))})",
            f"\t\t\t(mac {_mac(n.get('mac'))})",
            "\t\t)", "\t)",
        ]
    lines.append(")")
    return "\n".join(lines) + "\n"


def _memkb(v: object) -> int:
    """A MemKB printed with PRId64 (libxl's unset -1 stays -1)."""
    n = v if isinstance(v, int) and not isinstance(v, bool) else (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n
