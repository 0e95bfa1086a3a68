"""cffi builder (API mode) for libxenctrl and libxenforeignmemory.

Compiled against the real headers of libxen-dev, so struct layouts come from the C compiler,
never from guesses. Built by ``pip install`` through setup.py's ``cffi_modules``.
"""

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    """
    typedef struct xc_interface_core xc_interface;
    xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags);
    int xc_interface_close(xc_interface *xch);
    int xc_version(xc_interface *xch, int cmd, void *arg);
    """
)

ffibuilder.set_source(
    "domain_builder._xenctrl",
    """
    #include <xenctrl.h>
    #include <xenforeignmemory.h>
    """,
    libraries=["xenctrl", "xenforeignmemory"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
