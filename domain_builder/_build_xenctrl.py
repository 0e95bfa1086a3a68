"""cffi builder (API mode) for libxenctrl, libxenforeignmemory, libxenhypfs and (reads)
libxenstore.

Compiled against the real headers of libxen-dev, so struct layouts come from the C compiler,
never from guesses: every struct below ends in ``...;`` and names only the fields we use, and
the constants are ``...`` so their values are read from the headers at build time.
Built by ``pip install`` through setup.py's ``cffi_modules``.
"""

from cffi import FFI  # type: ignore[import-untyped]  # cffi ships no stubs (types-cffi)

ffibuilder = FFI()

ffibuilder.cdef(
    """
    /* ---- basic types ---------------------------------------------------------------- */
    typedef uint16_t domid_t;
    typedef unsigned long xen_pfn_t;
    typedef uint32_t evtchn_port_t;
    typedef uint8_t xen_domain_handle_t[16];
    typedef uint8_t *xc_cpumap_t;
    typedef struct xc_interface_core xc_interface;
    typedef struct xenforeignmemory_handle xenforeignmemory_handle;
    typedef struct xenforeignmemory_resource_handle xenforeignmemory_resource_handle;

    void free(void *ptr);

    /* ---- constants -------------------------------------------------------------------- */
    #define XC_PAGE_SHIFT ...
    #define XC_PAGE_SIZE ...
    #define XENVER_version ...
    #define XENVER_extraversion ...
    #define XENVER_compile_info ...
    #define XENVER_capabilities ...
    #define XENVER_changeset ...
    #define XENVER_platform_parameters ...
    #define XENVER_pagesize ...
    #define XENVER_commandline ...
    #define XENVER_build_id ...

    #define XEN_DOMCTL_CDF_hvm ...
    #define XEN_DOMCTL_CDF_hap ...
    #define XEN_DOMCTL_CDF_s3_integrity ...
    #define XEN_DOMCTL_CDF_oos_off ...
    #define XEN_DOMCTL_CDF_xs_domain ...
    #define XEN_DOMCTL_CDF_iommu ...
    #define XEN_DOMCTL_CDF_nested_virt ...
    #define XEN_DOMCTL_CDF_vpmu ...
    #define XEN_DOMCTL_GRANT_version_mask ...

    #define XEN_DOMINF_dying ...
    #define XEN_DOMINF_hvm_guest ...
    #define XEN_DOMINF_shutdown ...
    #define XEN_DOMINF_paused ...
    #define XEN_DOMINF_blocked ...
    #define XEN_DOMINF_running ...
    #define XEN_DOMINF_debugged ...
    #define XEN_DOMINF_xs_domain ...
    #define XEN_DOMINF_hap ...
    #define XEN_DOMINF_shutdownmask ...
    #define XEN_DOMINF_shutdownshift ...
    #define XEN_INVALID_MAX_VCPU_ID ...

    #define XEN_SYSCTL_PHYSCAP_hvm ...
    #define XEN_SYSCTL_PHYSCAP_pv ...
    #define XEN_SYSCTL_PHYSCAP_directio ...
    #define XEN_SYSCTL_PHYSCAP_hap ...
    #define XEN_SYSCTL_PHYSCAP_shadow ...
    #define XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share ...
    #define XEN_SYSCTL_PHYSCAP_vmtrace ...
    #define XEN_SYSCTL_PHYSCAP_vpmu ...
    #define XEN_SYSCTL_PHYSCAP_gnttab_v1 ...
    #define XEN_SYSCTL_PHYSCAP_gnttab_v2 ...

    #define XEN_SCHEDULER_CREDIT ...
    #define XEN_SCHEDULER_CREDIT2 ...
    #define XEN_SCHEDULER_ARINC653 ...
    #define XEN_SCHEDULER_RTDS ...
    #define XEN_SCHEDULER_NULL ...

    #define XEN_VCPUAFFINITY_HARD ...
    #define XEN_VCPUAFFINITY_SOFT ...

    #define XENMEMF_populate_on_demand ...
    #define XENMEMF_exact_node_request ...
    #define XENMEMF_vnode ...
    #define XENMEM_resource_grant_table ...
    #define XENMEM_resource_grant_table_id_shared ...

    #define MMUEXT_PIN_L1_TABLE ...
    #define MMUEXT_PIN_L2_TABLE ...
    #define MMUEXT_PIN_L3_TABLE ...
    #define MMUEXT_PIN_L4_TABLE ...
    #define MMUEXT_UNPIN_TABLE ...

    #define SHUTDOWN_poweroff ...
    #define SHUTDOWN_reboot ...
    #define SHUTDOWN_suspend ...
    #define SHUTDOWN_crash ...
    #define SHUTDOWN_watchdog ...
    #define SHUTDOWN_soft_reset ...

    #define VGCF_in_kernel ...
    #define VGCF_online ...
    #define VGCF_failsafe_disables_events ...
    #define VGCF_syscall_disables_events ...

    #define GTF_permit_access ...
    #define GNTTAB_RESERVED_CONSOLE ...
    #define GNTTAB_RESERVED_XENSTORE ...

    #define HVM_PARAM_STORE_PFN ...
    #define HVM_PARAM_STORE_EVTCHN ...
    #define HVM_PARAM_CONSOLE_PFN ...
    #define HVM_PARAM_CONSOLE_EVTCHN ...

    /* ---- structs (partial: the compiler fills in layout) ------------------------------ */
    typedef struct xen_compile_info {
        char compiler[64];
        char compile_by[16];
        char compile_domain[32];
        char compile_date[32];
    } xen_compile_info_t;
    typedef struct xen_platform_parameters {
        unsigned long virt_start;
        ...;
    } xen_platform_parameters_t;
    typedef struct xen_build_id {
        uint32_t len;
        ...;
    } xen_build_id_t;

    struct xen_arch_domainconfig {
        uint32_t emulation_flags;
        uint32_t misc_flags;
        ...;
    };
    struct xen_domctl_createdomain {
        uint32_t ssidref;
        xen_domain_handle_t handle;
        uint32_t flags;
        uint32_t iommu_opts;
        uint32_t max_vcpus;
        uint32_t max_evtchn_port;
        int32_t max_grant_frames;
        int32_t max_maptrack_frames;
        uint32_t grant_opts;
        uint32_t vmtrace_size;
        uint32_t cpupool_id;
        struct xen_arch_domainconfig arch;
        ...;
    };

    typedef struct xen_domctl_getdomaininfo {
        domid_t domain;
        uint32_t flags;
        uint64_t tot_pages;
        uint64_t max_pages;
        uint64_t outstanding_pages;
        uint64_t shr_pages;
        uint64_t paged_pages;
        uint64_t shared_info_frame;
        uint64_t cpu_time;
        uint32_t nr_online_vcpus;
        uint32_t max_vcpu_id;
        uint32_t ssidref;
        xen_domain_handle_t handle;
        uint32_t cpupool;
        uint8_t gpaddr_bits;
        ...;
    } xc_domaininfo_t;

    typedef struct xen_domctl_getvcpuinfo {
        uint32_t vcpu;
        uint8_t online;
        uint8_t blocked;
        uint8_t running;
        uint64_t cpu_time;
        uint32_t cpu;
        ...;
    } xc_vcpuinfo_t;

    typedef struct xen_sysctl_physinfo {
        uint32_t threads_per_core;
        uint32_t cores_per_socket;
        uint32_t nr_cpus;
        uint32_t max_cpu_id;
        uint32_t nr_nodes;
        uint32_t max_node_id;
        uint32_t cpu_khz;
        uint32_t capabilities;
        uint32_t arch_capabilities;
        uint64_t total_pages;
        uint64_t free_pages;
        uint64_t scrub_pages;
        uint64_t outstanding_pages;
        uint64_t max_mfn;
        uint32_t hw_cap[8];
        ...;
    } xc_physinfo_t;

    struct xen_domctl_sched_credit { uint16_t weight; uint16_t cap; ...; };
    struct xen_domctl_sched_credit2 { uint16_t weight; uint16_t cap; ...; };
    struct xen_sysctl_credit_schedule {
        uint32_t tslice_ms;
        uint32_t ratelimit_us;
        uint32_t vcpu_migr_delay_us;
        ...;
    };
    struct xen_sysctl_credit2_schedule { uint32_t ratelimit_us; ...; };

    typedef struct xen_sysctl_meminfo { uint64_t memsize; uint64_t memfree; } xc_meminfo_t;
    typedef struct xen_sysctl_cputopo {
        uint32_t core;
        uint32_t socket;
        uint32_t node;
    } xc_cputopo_t;
    struct xen_domctl_sched_rtds { uint32_t period; uint32_t budget; uint32_t flags; ...; };
    #define XEN_DOMCTL_SCHEDRT_extra ...
    #define XEN_VCPUAFFINITY_FORCE ...
    #define XEN_INVALID_NODE_DIST ...
    #define XEN_INVALID_CORE_ID ...
    #define XEN_INVALID_SOCKET_ID ...
    #define XEN_INVALID_NODE_ID ...
    #define XEN_DOMCTL_SENDTRIGGER_NMI ...
    #define XEN_DOMCTL_SENDTRIGGER_RESET ...
    #define XEN_DOMCTL_SENDTRIGGER_INIT ...
    #define XEN_DOMCTL_SENDTRIGGER_POWER ...
    #define XEN_DOMCTL_SENDTRIGGER_SLEEP ...

    typedef struct xc_cpupoolinfo {
        uint32_t cpupool_id;
        uint32_t sched_id;
        uint32_t n_dom;
        xc_cpumap_t cpumap;
    } xc_cpupoolinfo_t;

    struct mmuext_op {
        unsigned int cmd;
        union { xen_pfn_t mfn; unsigned long linear_addr; } arg1;
        ...;
    };

    /* x86_64 PV vCPU context; register names are the 64-bit members of Xen's unions. */
    struct cpu_user_regs_x86_64 {
        uint64_t r15; uint64_t r14; uint64_t r13; uint64_t r12;
        uint64_t rbp; uint64_t rbx; uint64_t r11; uint64_t r10; uint64_t r9; uint64_t r8;
        uint64_t rax; uint64_t rcx; uint64_t rdx; uint64_t rsi; uint64_t rdi;
        uint64_t rip;
        uint16_t cs;
        uint8_t saved_upcall_mask;
        uint64_t rflags;
        uint64_t rsp;
        uint16_t ss; uint16_t es; uint16_t ds; uint16_t fs; uint16_t gs;
        ...;
    };
    typedef struct vcpu_guest_context_x86_64 {
        uint64_t flags;
        struct cpu_user_regs_x86_64 user_regs;
        uint64_t ldt_base; uint64_t ldt_ents;
        uint64_t gdt_frames[16]; uint64_t gdt_ents;
        uint64_t kernel_ss; uint64_t kernel_sp;
        uint64_t ctrlreg[8];
        uint64_t debugreg[8];
        uint64_t event_callback_eip;
        uint64_t failsafe_callback_eip;
        uint64_t syscall_callback_eip;
        uint64_t vm_assist;
        uint64_t fs_base; uint64_t gs_base_kernel; uint64_t gs_base_user;
        ...;
    } vcpu_guest_context_x86_64_t;
    typedef union {
        vcpu_guest_context_x86_64_t x64;
        ...;
    } vcpu_guest_context_any_t;

    typedef struct grant_entry_v1 {
        uint16_t flags;
        domid_t domid;
        uint32_t frame;
    } grant_entry_v1_t;

    /* ---- libxenctrl --------------------------------------------------------------------- */
    xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags);
    int xc_interface_close(xc_interface *xch);
    int xc_version(xc_interface *xch, int cmd, void *arg);
    int xc_physinfo(xc_interface *xch, xc_physinfo_t *info);
    int xc_sched_id(xc_interface *xch, int *sched_id);
    int xc_get_max_cpus(xc_interface *xch);
    int xc_get_online_cpus(xc_interface *xch);
    int xc_get_cpumap_size(xc_interface *xch);
    long xc_sharing_freed_pages(xc_interface *xch);
    long xc_sharing_used_frames(xc_interface *xch);

    xc_cpupoolinfo_t *xc_cpupool_getinfo(xc_interface *xch, uint32_t poolid);
    void xc_cpupool_infofree(xc_interface *xch, xc_cpupoolinfo_t *info);
    xc_cpumap_t xc_cpupool_freeinfo(xc_interface *xch);
    int xc_cpupool_create(xc_interface *xch, uint32_t *ppoolid, uint32_t sched_id);
    int xc_cpupool_destroy(xc_interface *xch, uint32_t poolid);
    int xc_cpupool_addcpu(xc_interface *xch, uint32_t poolid, int cpu);
    int xc_cpupool_removecpu(xc_interface *xch, uint32_t poolid, int cpu);
    int xc_cpupool_movedomain(xc_interface *xch, uint32_t poolid, uint32_t domid);

    int xc_readconsolering(xc_interface *xch, char *buffer, unsigned int *pnr_chars,
                           int clear, int incremental, uint32_t *pindex);
    int xc_send_debug_keys(xc_interface *xch, const char *keys);
    int xc_domain_send_trigger(xc_interface *xch, uint32_t domid, uint32_t trigger,
                               uint32_t vcpu);
    int xc_domain_dumpcore(xc_interface *xch, uint32_t domid, const char *corename);
    int xc_domain_node_getaffinity(xc_interface *xch, uint32_t domind,
                                   uint8_t *nodemap);
    int xc_get_nodemap_size(xc_interface *xch);
    int xc_numainfo(xc_interface *xch, unsigned *max_nodes, xc_meminfo_t *meminfo,
                    uint32_t *distance);
    int xc_cputopoinfo(xc_interface *xch, unsigned *max_cpus, xc_cputopo_t *cputopo);

    int xc_domain_create(xc_interface *xch, uint32_t *pdomid,
                         struct xen_domctl_createdomain *config);
    int xc_domain_max_vcpus(xc_interface *xch, uint32_t domid, unsigned int max);
    int xc_domain_pause(xc_interface *xch, uint32_t domid);
    int xc_domain_unpause(xc_interface *xch, uint32_t domid);
    int xc_domain_destroy(xc_interface *xch, uint32_t domid);
    int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason);
    int xc_domain_sethandle(xc_interface *xch, uint32_t domid, xen_domain_handle_t handle);
    int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                              unsigned int max_domains, xc_domaininfo_t *info);
    int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb);
    int xc_domain_set_tsc_info(xc_interface *xch, uint32_t domid, uint32_t tsc_mode,
                               uint64_t elapsed_nsec, uint32_t gtsc_khz,
                               uint32_t incarnation);
    int xc_domain_get_tsc_info(xc_interface *xch, uint32_t domid, uint32_t *tsc_mode,
                               uint64_t *elapsed_nsec, uint32_t *gtsc_khz,
                               uint32_t *incarnation);
    int xc_domain_set_memmap_limit(xc_interface *xch, uint32_t domid,
                                   unsigned long map_limitkb);
    int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
                                         unsigned long nr_extents, unsigned int extent_order,
                                         unsigned int mem_flags, xen_pfn_t *extent_start);
    int xc_domain_increase_reservation_exact(xc_interface *xch, uint32_t domid,
                                             unsigned long nr_extents,
                                             unsigned int extent_order,
                                             unsigned int mem_flags, xen_pfn_t *extent_start);
    int xc_domain_decrease_reservation_exact(xc_interface *xch, uint32_t domid,
                                             unsigned long nr_extents,
                                             unsigned int extent_order,
                                             xen_pfn_t *extent_start);
    int xc_domain_claim_pages(xc_interface *xch, uint32_t domid, unsigned long nr_pages);
    long xc_get_tot_pages(xc_interface *xch, uint32_t domid);
    int xc_mmuext_op(xc_interface *xch, struct mmuext_op *op, unsigned int nr_ops,
                     uint32_t dom);

    int xc_vcpu_setcontext(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                           vcpu_guest_context_any_t *ctxt);
    int xc_vcpu_getcontext(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                           vcpu_guest_context_any_t *ctxt);
    int xc_vcpu_getinfo(xc_interface *xch, uint32_t domid, uint32_t vcpu, xc_vcpuinfo_t *info);
    int xc_vcpu_setaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                            xc_cpumap_t cpumap_hard_inout, xc_cpumap_t cpumap_soft_inout,
                            uint32_t flags);
    int xc_vcpu_getaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                            xc_cpumap_t cpumap_hard, xc_cpumap_t cpumap_soft, uint32_t flags);

    int xc_sched_credit_domain_set(xc_interface *xch, uint32_t domid,
                                   struct xen_domctl_sched_credit *sdom);
    int xc_sched_credit_domain_get(xc_interface *xch, uint32_t domid,
                                   struct xen_domctl_sched_credit *sdom);
    int xc_sched_credit_params_set(xc_interface *xch, uint32_t cpupool_id,
                                   struct xen_sysctl_credit_schedule *schedule);
    int xc_sched_credit_params_get(xc_interface *xch, uint32_t cpupool_id,
                                   struct xen_sysctl_credit_schedule *schedule);
    int xc_sched_credit2_domain_set(xc_interface *xch, uint32_t domid,
                                    struct xen_domctl_sched_credit2 *sdom);
    int xc_sched_credit2_domain_get(xc_interface *xch, uint32_t domid,
                                    struct xen_domctl_sched_credit2 *sdom);
    int xc_sched_credit2_params_set(xc_interface *xch, uint32_t cpupool_id,
                                    struct xen_sysctl_credit2_schedule *schedule);
    int xc_sched_credit2_params_get(xc_interface *xch, uint32_t cpupool_id,
                                    struct xen_sysctl_credit2_schedule *schedule);

    int xc_sched_rtds_domain_set(xc_interface *xch, uint32_t domid,
                                 struct xen_domctl_sched_rtds *sdom);
    int xc_sched_rtds_domain_get(xc_interface *xch, uint32_t domid,
                                 struct xen_domctl_sched_rtds *sdom);
    /* Per-vCPU RTDS parameters: Xen's array type is a union of partial structs, which
       cffi cannot declare, so a helper copies it into flat arrays (set_source below). */
    int xentool_rtds_vcpu(xc_interface *xch, uint32_t domid, int set, uint32_t num_vcpus,
                          uint32_t *vcpuid, uint32_t *period, uint32_t *budget,
                          uint32_t *flags);

    int xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom, uint32_t remote_dom);
    int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t value);
    int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t *value);

    /* ---- libxenforeignmemory ------------------------------------------------------------ */
    xenforeignmemory_handle *xenforeignmemory_open(void *logger, unsigned open_flags);
    int xenforeignmemory_close(xenforeignmemory_handle *fmem);
    void *xenforeignmemory_map(xenforeignmemory_handle *fmem, uint32_t dom, int prot,
                               size_t pages, const xen_pfn_t arr[], int err[]);
    int xenforeignmemory_unmap(xenforeignmemory_handle *fmem, void *addr, size_t pages);
    xenforeignmemory_resource_handle *xenforeignmemory_map_resource(
        xenforeignmemory_handle *fmem, domid_t domid, unsigned int type,
        unsigned int id, unsigned long frame, unsigned long nr_frames,
        void **paddr, int prot, int flags);
    int xenforeignmemory_unmap_resource(xenforeignmemory_handle *fmem,
                                        xenforeignmemory_resource_handle *fres);
    int xenforeignmemory_resource_size(xenforeignmemory_handle *fmem, domid_t domid,
                                       unsigned int type, unsigned int id, size_t *size);

    #define PROT_READ ...
    #define PROT_WRITE ...

    /* Domctls libxenctrl has no wrapper for (helpers in set_source below). */
    int xentool_hypercall_init(xc_interface *xch, uint32_t domid, uint64_t gmfn);
    int xentool_set_address_size(xc_interface *xch, uint32_t domid, uint32_t bits);

    /* ---- migration: restore ----------------------------------------------------------- */
    int xentool_set_ext_vcpucontext(xc_interface *xch, uint32_t domid, const void *buf,
                                    uint32_t size);
    int xentool_set_vcpu_extstate(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                  const void *buf, uint32_t size);
    int xentool_set_vcpu_msrs(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                              const void *buf, uint32_t size);
    int xentool_set_cpu_policy(xc_interface *xch, uint32_t domid, uint32_t nr_leaves,
                               const void *leaves, uint32_t nr_msrs, const void *msrs,
                               uint32_t *err);

    /* ---- PVH guests: HVM container, memory map, boot context, CPUID policy ------------ */
    #define XEN_X86_EMU_LAPIC ...
    #define HVM_PARAM_IOREQ_PFN ...
    #define HVM_PARAM_BUFIOREQ_PFN ...
    #define HVM_PARAM_TIMER_MODE ...
    #define HVM_PARAM_IDENT_PT ...
    #define HVM_PARAM_PAGING_RING_PFN ...
    #define HVM_PARAM_MONITOR_RING_PFN ...
    #define HVM_PARAM_SHARING_RING_PFN ...
    #define HVM_PARAM_ALTP2M ...
    #define HVM_PARAM_MCA_CAP ...
    #define XENTOOL_HVM_CODE_HEADER ...
    #define XENTOOL_HVM_CODE_CPU ...
    #define XENTOOL_HVM_CODE_MTRR ...
    #define XENTOOL_HVM_CODE_END ...

    struct hvm_hw_cpu {
        uint64_t rbx; uint64_t rip; uint64_t rflags;
        uint64_t cr0; uint64_t cr4; uint64_t dr6; uint64_t dr7;
        uint32_t cs_limit; uint32_t ds_limit; uint32_t es_limit; uint32_t ss_limit;
        uint32_t tr_limit;
        uint64_t cs_base; uint64_t ds_base; uint64_t es_base; uint64_t ss_base;
        uint64_t tr_base;
        uint32_t cs_arbytes; uint32_t ds_arbytes; uint32_t es_arbytes;
        uint32_t ss_arbytes; uint32_t tr_arbytes;
        uint64_t tsc;
        ...;
    };
    struct hvm_hw_mtrr { uint64_t msr_mtrr_def_type; ...; };

    int xc_domain_hvm_getcontext(xc_interface *xch, uint32_t domid, uint8_t *ctxt_buf,
                                 uint32_t size);
    int xc_domain_hvm_setcontext(xc_interface *xch, uint32_t domid, uint8_t *hvm_ctxt,
                                 uint32_t size);
    int xc_set_paging_mempool_size(xc_interface *xch, uint32_t domid, uint64_t size);
    int xc_domain_set_pod_target(xc_interface *xch, uint32_t domid, uint64_t target_pages,
                                 uint64_t *tot_pages, uint64_t *pod_cache_pages,
                                 uint64_t *pod_entries);
    int xc_get_paging_mempool_size(xc_interface *xch, uint32_t domid, uint64_t *size);
    /* struct e820entry is packed and xc_xend_cpuid holds a union: helpers take flat arrays
       (set_source below). */
    int xentool_set_memory_map(xc_interface *xch, uint32_t domid, uint32_t n,
                               const uint64_t *addr, const uint64_t *size,
                               const uint32_t *type);
    int xentool_cpuid_apply(xc_interface *xch, uint32_t domid, int itsc, int nested_virt,
                            uint32_t n, const uint32_t *leaf, const uint32_t *subleaf,
                            const char *regs);
    int xentool_cpu_feature_count(void);
    const char *xentool_cpu_feature_name(int i);
    unsigned int xentool_cpu_feature_bit(int i);

    /* ---- migration: save ------------------------------------------------------------- */
    /* Raw records for the libxc stream: the x86_64 vcpu_guest_context, the extended,
       xsave and MSR vCPU state and the serialised CPU policy, as bytes (set_source below);
       the offsets are of the fields a save turns from machine to pseudo-physical frames. */
    #define XENTOOL_SAVE_VCPU_SIZE ...
    #define XENTOOL_SAVE_OFF_RDX ...
    #define XENTOOL_SAVE_OFF_CTRLREG ...
    #define XENTOOL_SAVE_OFF_GDT_FRAMES ...
    #define XENTOOL_SAVE_OFF_GDT_ENTS ...
    #define XENTOOL_SAVE_CPUID_LEAF_SIZE ...
    #define XENTOOL_SAVE_MSR_ENTRY_SIZE ...
    #define XENTOOL_SAVE_VCPU_MSR_SIZE ...
    int xc_get_pfn_type_batch(xc_interface *xch, uint32_t dom, unsigned int num,
                              xen_pfn_t *arr);
    int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast);
    int xc_maximum_ram_page(xc_interface *xch, unsigned long *max_mfn);
    int xc_domain_get_guest_width(xc_interface *xch, uint32_t domid,
                                  unsigned int *guest_width);
    int xentool_save_vcpu(xc_interface *xch, uint32_t domid, uint32_t vcpu, uint8_t *out);
    int xentool_save_ext_vcpu(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                              uint8_t *out, uint32_t *size);
    int xentool_save_xsave(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                           uint8_t *out, uint32_t *size);
    int xentool_save_msrs(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                          uint8_t *out, uint32_t *count);
    int xentool_save_cpu_policy(xc_interface *xch, uint32_t domid, uint8_t *leaves,
                                uint32_t *nr_leaves, uint8_t *msrs, uint32_t *nr_msrs);

    /* ---- migration: live ------------------------------------------------------------- */
    /* Log-dirty mode for the pre-copy rounds of a live migration (set_source below). */
    int xentool_logdirty(xc_interface *xch, uint32_t domid, int enable);
    long long xentool_logdirty_clean(xc_interface *xch, uint32_t domid, uint8_t *bitmap,
                                     unsigned long pages, uint32_t *dirty);

    /* ---- libxenhypfs: hypervisor runtime parameters (set-parameters) ------------------ */
    typedef struct xenhypfs_handle xenhypfs_handle;
    xenhypfs_handle *xenhypfs_open(void *logger, unsigned int open_flags);
    int xenhypfs_close(xenhypfs_handle *fshdl);
    int xenhypfs_write(xenhypfs_handle *fshdl, const char *path, const char *val);
    char *xenhypfs_read(xenhypfs_handle *fshdl, const char *path);

    /* ---- libxenstore: read-only fast path for the hot query verbs ----------------------- */
    typedef uint32_t xs_transaction_t;
    struct xs_handle;
    struct xs_handle *xs_open(unsigned long flags);
    void xs_close(struct xs_handle *xsh);
    void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path,
                  unsigned int *len);
    char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path,
                        unsigned int *num);
    """
)

ffibuilder.set_source(
    "domain_builder._xenctrl",
    """
    #include <stdlib.h>
    #include <sys/mman.h>
    #include <xenctrl.h>
    #include <xenforeignmemory.h>
    #include <xenstore.h>
    #include <xenhypfs.h>
    #include <xen/grant_table.h>
    #include <xen/hvm/params.h>
    #include <xen/hvm/save.h>

    /* The PV builder needs two domctls that only libxenguest wraps; xc_domctl fills in
       the interface version. */
    static int xentool_hypercall_init(xc_interface *xch, uint32_t domid, uint64_t gmfn)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_hypercall_init, .domain = domid };
        d.u.hypercall_init.gmfn = gmfn;
        return xc_domctl(xch, &d);
    }

    static int xentool_rtds_vcpu(xc_interface *xch, uint32_t domid, int set,
                                 uint32_t num_vcpus, uint32_t *vcpuid, uint32_t *period,
                                 uint32_t *budget, uint32_t *flags)
    {
        xen_domctl_schedparam_vcpu_t *v = calloc(num_vcpus ? num_vcpus : 1, sizeof(*v));
        uint32_t i;
        int rc;

        if (!v)
            return -1;
        for (i = 0; i < num_vcpus; i++) {
            v[i].vcpuid = vcpuid[i];
            v[i].u.rtds.period = period[i];
            v[i].u.rtds.budget = budget[i];
            v[i].u.rtds.flags = flags[i];
        }
        rc = set ? xc_sched_rtds_vcpu_set(xch, domid, v, num_vcpus)
                 : xc_sched_rtds_vcpu_get(xch, domid, v, num_vcpus);
        for (i = 0; rc == 0 && i < num_vcpus; i++) {
            period[i] = v[i].u.rtds.period;
            budget[i] = v[i].u.rtds.budget;
            flags[i] = v[i].u.rtds.flags;
        }
        free(v);
        return rc;
    }

    /* PVH: HVM save-record type codes, which the headers give only as sizeof tricks. */
    #define XENTOOL_HVM_CODE_HEADER HVM_SAVE_CODE(HEADER)
    #define XENTOOL_HVM_CODE_CPU HVM_SAVE_CODE(CPU)
    #define XENTOOL_HVM_CODE_MTRR HVM_SAVE_CODE(MTRR)
    #define XENTOOL_HVM_CODE_END HVM_SAVE_CODE(END)

    static int xentool_set_memory_map(xc_interface *xch, uint32_t domid, uint32_t n,
                                      const uint64_t *addr, const uint64_t *size,
                                      const uint32_t *type)
    {
        struct e820entry *map = calloc(n ? n : 1, sizeof(*map));
        uint32_t i;
        int rc;

        if (!map)
            return -1;
        for (i = 0; i < n; i++) {
            map[i].addr = addr[i];
            map[i].size = size[i];
            map[i].type = type[i];
        }
        rc = xc_domain_set_memory_map(xch, domid, map, n);
        free(map);
        return rc;
    }

    /* regs: n entries of 4 registers (eax..edx), 33 bytes each: a 32-character policy
       string and its NUL, or an empty string for a register left alone. */
    static int xentool_cpuid_apply(xc_interface *xch, uint32_t domid, int itsc,
                                   int nested_virt, uint32_t n, const uint32_t *leaf,
                                   const uint32_t *subleaf, const char *regs)
    {
        struct xc_xend_cpuid *xend = calloc(n + 1, sizeof(*xend));
        uint32_t i, r;
        int rc;

        if (!xend)
            return -1;
        for (i = 0; i < n; i++) {
            xend[i].leaf = leaf[i];
            xend[i].subleaf = subleaf[i];
            for (r = 0; r < 4; r++) {
                const char *p = regs + (i * 4 + r) * 33;
                xend[i].policy[r] = *p ? (char *)p : NULL;
            }
        }
        xend[n].leaf = XEN_CPUID_INPUT_UNUSED;
        xend[n].subleaf = XEN_CPUID_INPUT_UNUSED;
        /* PAE is always on for PVH and PV (libxl__cpuid_legacy). */
        rc = xc_cpuid_apply_policy(xch, domid, false, NULL, 0, true, itsc, nested_virt,
                                   n ? xend : NULL, NULL);
        free(xend);
        return rc;
    }

    /* The featureset names and bit numbers of the public header, for cpuid="host,NAME=..". */
    static const struct { const char *name; unsigned int bit; } xentool_features[] = {
    #define XEN_CPUFEATURE(name, value) { #name, value },
    #include <xen/arch-x86/cpufeatureset.h>
    };
    static int xentool_cpu_feature_count(void)
    {
        return sizeof(xentool_features) / sizeof(xentool_features[0]);
    }
    static const char *xentool_cpu_feature_name(int i)
    {
        return xentool_features[i].name;
    }
    static unsigned int xentool_cpu_feature_bit(int i)
    {
        return xentool_features[i].bit;
    }

    static int xentool_set_address_size(xc_interface *xch, uint32_t domid, uint32_t bits)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_set_address_size, .domain = domid };
        d.u.address_size.size = bits;
        return xc_domctl(xch, &d);
    }

    /* ---- migration: restore ---------------------------------------------------------
       The vCPU state records of a libxc stream are the raw domctl payloads: these hand
       them to Xen as libxenguest's restore does (it has no exported wrapper). */
    #include <errno.h>
    #include <string.h>
    #include <xenguest.h>

    static int xentool_set_ext_vcpucontext(xc_interface *xch, uint32_t domid,
                                           const void *buf, uint32_t size)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_set_ext_vcpucontext, .domain = domid };
        if (size > sizeof(d.u.ext_vcpucontext)) {
            errno = E2BIG;
            return -1;
        }
        memcpy(&d.u.ext_vcpucontext, buf, size);
        return xc_domctl(xch, &d);
    }

    static int xentool_vcpu_blob(xc_interface *xch, uint32_t domid, uint32_t cmd,
                                 uint32_t vcpu, const void *buf, uint32_t size)
    {
        struct xen_domctl d = { .cmd = cmd, .domain = domid };
        DECLARE_HYPERCALL_BUFFER(void, hb);
        int rc;

        hb = xc_hypercall_buffer_alloc(xch, hb, size ? size : 1);
        if (!hb)
            return -1;
        memcpy(hb, buf, size);
        if (cmd == XEN_DOMCTL_setvcpuextstate) {
            d.u.vcpuextstate.vcpu = vcpu;
            d.u.vcpuextstate.size = size;
            set_xen_guest_handle(d.u.vcpuextstate.buffer, hb);
        } else {
            d.u.vcpu_msrs.vcpu = vcpu;
            d.u.vcpu_msrs.msr_count = size / sizeof(xen_domctl_vcpu_msr_t);
            set_xen_guest_handle(d.u.vcpu_msrs.msrs, hb);
        }
        rc = xc_domctl(xch, &d);
        xc_hypercall_buffer_free(xch, hb);
        return rc;
    }

    static int xentool_set_vcpu_extstate(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                         const void *buf, uint32_t size)
    {
        return xentool_vcpu_blob(xch, domid, XEN_DOMCTL_setvcpuextstate, vcpu, buf, size);
    }

    static int xentool_set_vcpu_msrs(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                     const void *buf, uint32_t size)
    {
        return xentool_vcpu_blob(xch, domid, XEN_DOMCTL_set_vcpu_msrs, vcpu, buf, size);
    }

    /* err: the leaf, subleaf and MSR Xen refused (~0 for none). */
    static int xentool_set_cpu_policy(xc_interface *xch, uint32_t domid, uint32_t nr_leaves,
                                      const void *leaves, uint32_t nr_msrs,
                                      const void *msrs, uint32_t *err)
    {
        err[0] = err[1] = err[2] = ~0u;
        return xc_set_domain_cpu_policy(xch, domid, nr_leaves, (xen_cpuid_leaf_t *)leaves,
                                        nr_msrs, (xen_msr_entry_t *)msrs,
                                        &err[0], &err[1], &err[2]);
    }

    /* ---- migration: save ------------------------------------------------------------- */
    #include <errno.h>
    #include <stddef.h>
    #include <string.h>
    #include <xenguest.h>
    /* Exported by libxenctrl, declared only in its private header. */
    int xc_get_pfn_type_batch(xc_interface *xch, uint32_t dom, unsigned int num,
                              xen_pfn_t *arr);
    #define XENTOOL_SAVE_VCPU_SIZE sizeof(vcpu_guest_context_x86_64_t)
    #define XENTOOL_SAVE_OFF_RDX offsetof(vcpu_guest_context_x86_64_t, user_regs.rdx)
    #define XENTOOL_SAVE_OFF_CTRLREG offsetof(vcpu_guest_context_x86_64_t, ctrlreg)
    #define XENTOOL_SAVE_OFF_GDT_FRAMES offsetof(vcpu_guest_context_x86_64_t, gdt_frames)
    #define XENTOOL_SAVE_OFF_GDT_ENTS offsetof(vcpu_guest_context_x86_64_t, gdt_ents)
    #define XENTOOL_SAVE_CPUID_LEAF_SIZE sizeof(xen_cpuid_leaf_t)
    #define XENTOOL_SAVE_MSR_ENTRY_SIZE sizeof(xen_msr_entry_t)
    #define XENTOOL_SAVE_VCPU_MSR_SIZE sizeof(xen_domctl_vcpu_msr_t)

    static int xentool_save_vcpu(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                 uint8_t *out)
    {
        vcpu_guest_context_any_t c;
        int rc = xc_vcpu_getcontext(xch, domid, vcpu, &c);

        if (rc == 0)
            memcpy(out, &c.x64, sizeof(c.x64));
        return rc;
    }

    /* *size: the room in out (128 is enough); the record's length on return, 0: none. */
    static int xentool_save_ext_vcpu(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                     uint8_t *out, uint32_t *size)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_get_ext_vcpucontext, .domain = domid };
        int rc;

        d.u.ext_vcpucontext.vcpu = vcpu;
        rc = xc_domctl(xch, &d);
        if (rc < 0)
            return rc;
        if (d.u.ext_vcpucontext.size > *size ||
            d.u.ext_vcpucontext.size > sizeof(d.u.ext_vcpucontext)) {
            errno = E2BIG;
            return -1;
        }
        *size = d.u.ext_vcpucontext.size;
        memcpy(out, &d.u.ext_vcpucontext, *size);
        return 0;
    }

    /* out NULL: *size becomes the length needed (0: no xsave state). */
    static int xentool_save_xsave(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                  uint8_t *out, uint32_t *size)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_getvcpuextstate, .domain = domid };
        DECLARE_HYPERCALL_BUFFER(void, buf);
        int rc;

        d.u.vcpuextstate.vcpu = vcpu;
        rc = xc_domctl(xch, &d);
        if (rc < 0)
            return rc;
        if (!d.u.vcpuextstate.xfeature_mask || !d.u.vcpuextstate.size) {
            *size = 0;
            return 0;
        }
        if (out == NULL || d.u.vcpuextstate.size > *size) {
            *size = d.u.vcpuextstate.size;
            return 0;
        }
        buf = xc_hypercall_buffer_alloc(xch, buf, d.u.vcpuextstate.size);
        if (!buf)
            return -1;
        set_xen_guest_handle(d.u.vcpuextstate.buffer, buf);
        rc = xc_domctl(xch, &d);
        if (rc == 0) {
            *size = d.u.vcpuextstate.size;
            memcpy(out, buf, *size);
        }
        xc_hypercall_buffer_free(xch, buf);
        return rc;
    }

    /* out NULL: *count becomes the number of MSRs (entries of XENTOOL_SAVE_VCPU_MSR_SIZE). */
    static int xentool_save_msrs(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                                 uint8_t *out, uint32_t *count)
    {
        struct xen_domctl d = { .cmd = XEN_DOMCTL_get_vcpu_msrs, .domain = domid };
        DECLARE_HYPERCALL_BUFFER(void, buf);
        uint32_t room = *count;
        int rc;

        d.u.vcpu_msrs.vcpu = vcpu;
        rc = xc_domctl(xch, &d);
        if (rc < 0)
            return rc;
        *count = d.u.vcpu_msrs.msr_count;
        if (out == NULL || *count == 0 || *count > room)
            return 0;
        buf = xc_hypercall_buffer_alloc(xch, buf, *count * sizeof(xen_domctl_vcpu_msr_t));
        if (!buf)
            return -1;
        set_xen_guest_handle(d.u.vcpu_msrs.msrs, buf);
        rc = xc_domctl(xch, &d);
        if (rc == 0) {
            *count = d.u.vcpu_msrs.msr_count;
            memcpy(out, buf, *count * sizeof(xen_domctl_vcpu_msr_t));
        }
        xc_hypercall_buffer_free(xch, buf);
        return rc;
    }

    /* leaves NULL: the counts needed; else the domain's policy, serialised. */
    static int xentool_save_cpu_policy(xc_interface *xch, uint32_t domid, uint8_t *leaves,
                                       uint32_t *nr_leaves, uint8_t *msrs,
                                       uint32_t *nr_msrs)
    {
        xc_cpu_policy_t *p;
        int rc;

        if (leaves == NULL)
            return xc_cpu_policy_get_size(xch, nr_leaves, nr_msrs);
        p = xc_cpu_policy_init();
        if (!p)
            return -1;
        rc = xc_cpu_policy_get_domain(xch, domid, p);
        if (rc == 0)
            rc = xc_cpu_policy_serialise(xch, p, (xen_cpuid_leaf_t *)leaves, nr_leaves,
                                         (xen_msr_entry_t *)msrs, nr_msrs);
        xc_cpu_policy_destroy(p);
        return rc;
    }

    /* ---- migration: live ------------------------------------------------------------- */
    /* enable 0: log-dirty (and any shadow mode) off, as libxc leaves a PV guest after a
       save. */
    static int xentool_logdirty(xc_interface *xch, uint32_t domid, int enable)
    {
        return xc_shadow_control(xch, domid,
                                 enable ? XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY
                                        : XEN_DOMCTL_SHADOW_OP_OFF, NULL, 0);
    }

    /* The dirty bitmap of the first `pages` pfns into bitmap (a bit per pfn, 64-bit
       words, little-endian on x86), cleared in Xen; *dirty: Xen's dirty count. */
    static long long xentool_logdirty_clean(xc_interface *xch, uint32_t domid,
                                            uint8_t *bitmap, unsigned long pages,
                                            uint32_t *dirty)
    {
        DECLARE_HYPERCALL_BUFFER(void, buf);
        size_t bytes = ((pages + 63) / 64) * 8;
        xc_shadow_op_stats_t stats;
        long long rc;

        buf = xc_hypercall_buffer_alloc(xch, buf, bytes ? bytes : 8);
        if (!buf)
            return -1;
        rc = xc_logdirty_control(xch, domid, XEN_DOMCTL_SHADOW_OP_CLEAN,
                                 HYPERCALL_BUFFER(buf), pages, 0, &stats);
        if (rc >= 0) {
            memcpy(bitmap, buf, bytes);
            *dirty = stats.dirty_count;
        }
        xc_hypercall_buffer_free(xch, buf);
        return rc;
    }
    """,
    libraries=["xenctrl", "xenforeignmemory", "xenstore", "xenhypfs",
               "xenguest"],  # xenguest for xc_domain_dumpcore only: its builder is not used
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
