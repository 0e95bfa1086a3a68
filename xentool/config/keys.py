"""Every xl.cfg key xl 4.17 reads, and what xentool does with it for an x86 PV guest.

Accepted means applied: a key is either **applied** (the table names what applies it: a
step of ``create``, the builder, a device row, the monitor), **ignored because xl ignores
it for PV guests too** (HVM/PVH/ARM-only keys, read by xl only in branches a PV guest
never takes; a warning says so), or **refused** by name before anything is built.  A key
xl does not know is ignored with a warning (xl is silent).  tests/unit/config/test_keys.py
holds the table against the parser and the create steps.

Classified from ``tools/xl/xl_parse.c`` (``parse_config_data``) and libxl 4.17
(``libxl_create.c``, ``libxl_dom.c``, ``libxl_x86.c``, ``libxl_sched.c``).
"""

from __future__ import annotations

#: Keys xentool applies, with what applies them.  Steps are those of ``create``'s journal.
APPLIED: dict[str, str] = {
    "name": "step: xenstore nodes",
    "uuid": "step: create domain (handle), xenstore nodes (/vm/<uuid>)",
    "type": "config: pv and pvh are built (hvm refused by value)",
    "builder": "config: deprecated spelling of type",
    "kernel": "step: build",
    "firmware": "config: pvgrub32/pvgrub64 as the kernel; step: build",
    "ramdisk": "step: build",
    "cmdline": "step: build (start_info command line)",
    "root": "step: build (command line)",
    "extra": "step: build (command line)",
    "memory": "step: build (populate), post-build nodes (memory/target)",
    "maxmem": "step: build (max memory), post-build nodes (memory/static-max)",
    "vcpus": "step: post-build nodes (cpu/N/availability)",
    "maxvcpus": "step: create domain (max_vcpus)",
    "cpus": "step: vcpu affinity",
    "cpus_soft": "step: vcpu affinity",
    "cpu_weight": "step: scheduler parameters",
    "cap": "step: scheduler parameters",
    "pool": "step: create domain (cpupool_id)",
    "max_grant_frames": "step: create domain",
    "max_maptrack_frames": "step: create domain",
    "max_event_channels": "step: create domain (max_evtchn_port)",
    "tsc_mode": "step: tsc mode",
    "disk": "step: attach vbd (device table row vbd)",
    "vif": "step: attach vif (device table row vif)",
    "on_poweroff": "monitor: record (step: save config)",
    "on_reboot": "monitor: record (step: save config)",
    "on_watchdog": "monitor: record (step: save config)",
    "on_crash": "monitor: record (step: save config)",
    "on_soft_reset": "monitor: record (step: save config), a PV guest's soft reset destroys",
    # Accepted only at their default values (anything else is refused by value):
    "vfb": "config: only an empty list",
    "e820_host": "config: only false (the default)",
    "nomigrate": "config: only false (the default)",
    "bootloader_args": "config: only without a bootloader (then xl ignores it too)",
}

#: Keys xl reads only for HVM, PVH or ARM guests (or for a PV guest only together with a
#: key xentool refuses): for a PV guest xl ignores them, and so does xentool.
IGNORED_FOR_PV = frozenset("""
acpi acpi_firmware acpi_laptop_slate acpi_s3 acpi_s4 altp2m altp2mhvm apic bios
bios_path_override boot device_model_args_hvm device_model_stubdomain_seclabel device_tree
firmware_override gfx_passthru gic_version hap hdtype hpet latency mca_caps mmio_hole
ms_vm_genid nestedhvm nographic nx oos pae pvshim pvshim_cmdline pvshim_extra pvshim_path
rdm_mem_boundary serial shadow_memory slice smbios_firmware soundhw spice
spice_clipboard_sharing spice_image_compression spice_streaming_video spiceagent_mouse
spicedisable_ticketing spicehost spicepasswd spiceport spicetls_port spiceusbredirection
spicevdagent stdvga stubdomain_cmdline stubdomain_kernel stubdomain_memory
stubdomain_ramdisk tee usb usbdevice usbversion vendor_device vga viridian vkb_device
vpt_align vuart xen_platform_pci display keymap sdl vncdisplay vnclisten vncpasswd
vncunused xauthority opengl pci_msitranslate pci_power_mgmt rdm
""".split())  # noqa: SIM905 - a long word list reads better as text than as literals

#: Keys xl only warns about and otherwise ignores (xl's own message, roughly).
XL_WARNS: dict[str, str] = {
    "device_model": "xl ignores the device_model directive",
    "vif2": "vif2 is obsolete; xl ignores it (use vif)",
    "vncviewer": "xl ignores vncviewer in a config (use 'create -V')",
}

#: Keys xl applies to a PV guest that xentool cannot apply yet: refused by name.
REFUSED: dict[str, str] = {
    "bootloader": "xentool does not run bootloaders such as pygrub",
    "channel": "needs extra consoles and a device model",
    "cpuid": "CPUID policies are not applied yet",
    "device_model_args": "needs a device model (qemu)",
    "device_model_args_pv": "needs a device model (qemu)",
    "device_model_override": "needs a device model (qemu)",
    "device_model_stubdomain_override": "needs a device model (qemu)",
    "device_model_user": "needs a device model (qemu)",
    "device_model_version": "needs a device model (qemu)",
    "dm_restrict": "needs a device model (qemu)",
    "driver_domain": "driver domains are not supported yet",
    "dtdev": "device tree passthrough does not exist on x86",
    "extratime": "RTDS scheduler parameters are not applied yet",
    "period": "RTDS scheduler parameters are not applied yet",
    "init_seclabel": "XSM labels are not applied yet",
    "seclabel": "XSM labels are not applied yet",
    "iomem": "I/O memory passthrough is not supported yet",
    "ioports": "I/O port passthrough is not supported yet",
    "irqs": "IRQ passthrough is not supported yet",
    "pci": "PCI passthrough is not supported yet",
    "pci_permissive": "PCI passthrough is not supported yet",
    "pci_seize": "PCI passthrough is not supported yet",
    "passthrough": "passthrough is not supported yet",
    "localtime": "the guest's time offset is not applied yet",
    "rtc_timeoffset": "the guest's time offset is not applied yet",
    "max_grant_version": "the grant table version limit is not applied yet",
    "msr_relaxed": "relaxed MSR handling is not applied yet",
    "p9": "9pfs needs a device model (qemu)",
    "pvcalls": "PV calls devices are not supported yet",
    "timer_mode": "xl refuses it for PV guests too",
    "usbctrl": "PV USB is not supported yet",
    "usbdev": "PV USB is not supported yet",
    "vdispl": "PV display devices are not supported yet",
    "videoram": "it lowers the memory target of a PV guest; not applied yet",
    "vkb": "virtual keyboards need a device model (qemu)",
    "vmtrace_buf_kb": "Xen refuses vmtrace for PV guests",
    "vnc": "a virtual framebuffer needs a device model (qemu)",
    "vnuma": "libxl refuses vNUMA for PV guests too",
    "vpmu": "the virtual PMU is not enabled yet",
    "vsnd": "PV sound devices are not supported yet",
    "vtpm": "vTPM devices are not supported yet",
    "xend_suspend_evtchn_compat": "xend compatibility is not applied",
}

#: For a PVH guest (``type="pvh"``): keys applied besides APPLIED, and what applies them.
#: A PVH guest ignores the rest of IGNORED_FOR_PV (xl reads them for HVM guests only), and
#: ``e820_host`` (PV only).
APPLIED_PVH: dict[str, str] = {
    "cpuid": "step: build (the CPUID policy of the string form)",
    "timer_mode": "step: build (HVM parameter)",
    "nestedhvm": "step: create domain (flag), build (CPUID policy)",
    "shadow_memory": "step: build (paging pool)",
    "oos": "step: create domain (flag)",
    "nomigrate": "step: build (CPUID policy: invariant TSC)",
    # Accepted only at their default values (anything else is refused by value):
    "hap": "config: only 1 (the default)",
    "altp2m": "config: only disabled (the default)",
    "pvshim": "config: only 0 (the default)",
}

#: Keys a PVH guest ignores as xl does (with a warning).
IGNORED_FOR_PVH = (IGNORED_FOR_PV - frozenset(APPLIED_PVH)) | {"e820_host"}

#: Every key xl 4.17 reads (for any guest type).
XL_KEYS = frozenset(APPLIED) | IGNORED_FOR_PV | frozenset(XL_WARNS) | frozenset(REFUSED)
