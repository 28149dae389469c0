"""Setpoint beside the peers a user would pick instead, in one run on one machine.

checks_bench.py   N HTTP checks at 1 s: Setpoint (and Setpoint with a new connection per check),
                  blackbox_exporter driven by Prometheus, Monit
server.py         the shared target: a bare asyncio HTTP server (its own process) recording arrivals
"""
