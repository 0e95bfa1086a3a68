"""Save, restore and migration of domains in the formats Xen's own tools speak.

:mod:`xentool.migration.stream` is the libxc migration stream v2/v3 (what
``xc_domain_save``/``xc_domain_restore`` write and read), :mod:`xentool.migration.libxl_stream`
the libxl stream around it and the header of an ``xl save`` file.  Both are pure codecs: no
hypercalls, bounded memory, one error root (:class:`~xentool.migration.stream.StreamError`).
"""
