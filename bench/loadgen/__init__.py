"""The latency benchmark's moving parts, each run in its own process by ``bench/run_bench.py``:

- ``fix``: the FIX 4.4 messages the load generator sends (a strict-valid NewOrderSingle of about
  210 bytes carrying its send time in ClOrdID) and a minimal framer;
- ``sink``: a minimal FIX acceptor (raw asyncio + uvloop) that answers Logon, TestRequest and Logout
  and records the one-way latency of every NewOrderSingle in a preallocated array;
- ``gen``: the load generator (blocking sockets, open-loop pacing or a bounded in-flight window);
- ``idle``: many TLS sessions that log on and then idle (the proxy's memory per session);
- ``procs``: processes, CPU clocks of other processes, RSS, ports, mosquitto;
- ``stats``: exact percentiles.
"""
