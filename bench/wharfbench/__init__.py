"""wharfbench: wharf side by side with nginx, gunicorn and bare hyper.

`python3 -m wharfbench` (what bench/run runs, with bench/ on PYTHONPATH) starts
every server itself on loopback, runs the selected scenarios, stops every server
it started and writes the results. One module per concern:

- common: the checkout's paths, scenario ids and titles, BenchError, progress
- procs: the process table, memory and CPU of a pid, `Server`, `stop_all`
- load: the load generators (wrk, h2load, a python3 loop) and their parsing
- peers: making the servers (frontend, bare-hyper, gunicorn, nginx, edge, redis)
  and their configurations and certificates, and reading their counters
- scenarios/: the scenarios, one module per family
- harness: `Harness`, which runs the scenarios and holds their results
- machine: the machine, its load, tool versions, git revision
- report: the targets, docs/benchmarks.md's results section and SVGs, the
  console summary
- __main__: the options and the run from start to results file

See bench/README.md.
"""
