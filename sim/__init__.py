"""Discrete-event simulator and capacity planner on the mesh's own placement code.

It answers "how many pods of what size do I need?" before anything is
deployed, by running the functions the sidecars run (``placement``:
``SizeAwareLRU``, ``choose_load_target``, ``pick_copy``, ``decide_copy``)
against generated or recorded traffic.  One module per job:

``scenario``  validated scenario files          ``workload``  populations and request arrays
``trace``     CSV / JSON-lines traces            ``engine``    the event loop and routing
``cluster``   pods, loads, evictions (as the loader does them)
``baselines`` infinite cache, Belady MIN, pooled LRU on the same requests
``stats``     figures from a run                 ``runner``    scenario → figures
``planner``   cheapest pods × memory meeting targets
``report`` / ``plots`` / ``cli``   tables, report.md, PNGs, ``mmesh sim``
``alternatives``  eviction policies the mesh does not run (benchmarks only)
``replay``    a trace sent to a live mesh, hit/miss per request (fidelity checks)
"""
