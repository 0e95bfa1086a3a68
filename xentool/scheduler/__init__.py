"""Scheduling: per-domain parameters, and declarative CPU weights for the credit and credit2
schedulers.

Three layers, kept apart so the middle one is tested without Xen:

* **Policy** (``parse_policy``/``load_policy``): a TOML file mapping domain-name patterns to
  a weight and/or cap, optionally restricted to cpupools or schedulers::

      [default]              # guests no rule matches and whose xl.cfg sets nothing
      weight = 256

      [[rule]]
      match = ["web-*", "db"]  # fnmatch globs on the domain name, case-sensitive
      pool = "Pool-0"          # optional: cpupool name globs
      scheduler = "credit2"    # optional: "credit" and/or "credit2"
      weight = 512             # 1-65535
      cap = 50                 # percent of one pCPU, 0 = uncapped

* **Decisions** (``decide``, ``expected_shares``, ``usage``): pure functions.  For each field
  (weight, cap) the value comes from the first rule that matches the domain; when that rule
  leaves the field out, from the domain's own xl.cfg (``cpu_weight``/``cap``, as libxl stored
  it), then from ``[default]``; otherwise the field is left as it is.  Domain-0 is managed only
  by rules: xl.cfg and ``[default]`` concern guests.

* **Controller** (``Controller``): applies decisions through a small ``Backend`` (XenCtrl +
  XenStore in production, fakes in tests), on every ``@introduceDomain``, on policy reload
  and periodically; survives xenstored restarts and domains vanishing mid-update.
"""

#: XEN_SCHEDULER_* ids of the schedulers xentool manages (kept literal: no libxenctrl
#: import is needed to name them).
CREDIT, CREDIT2 = 5, 6
#: Every scheduler id Xen 4.17 knows, by name as ``xl info`` prints it.
SCHEDULER_NAMES = {0: "unknown", 4: "sedf", 5: "credit", 6: "credit2", 7: "arinc653",
                   8: "rtds", 9: "null"}
