#!/usr/bin/env python3
"""A Sentinel-aware application, as users run one: redis-py's Sentinel client.

It writes witnesses through the master the sentinels name (INCR on witness:<k>:count and
RPUSH of the write number on witness:<k>:list, one key pair per write) until the file
STOP exists, retrying a write that failed (it did not happen: the connection error or the
READONLY came back instead of the reply). It also reads back as it goes. At the end it
prints one JSON line: acknowledged writes, failed attempts, reads, the master the
sentinels name, and what each sentinel says.

usage: sentinel_client.py SENTINELS(host:port,...) MASTER_NAME STOP_FILE
"""
import json
import os
import sys
import time

import redis
from redis.sentinel import Sentinel


def main() -> None:
    sentinels = [(h, int(p)) for h, p in (s.rsplit(":", 1) for s in sys.argv[1].split(","))]
    name, stop = sys.argv[2], sys.argv[3]
    sentinel = Sentinel(sentinels, socket_timeout=5.0)
    master = sentinel.master_for(name, socket_timeout=5.0, retry_on_timeout=False)
    acknowledged = failed = reads = 0
    while not os.path.exists(stop):
        k = acknowledged % 7
        try:
            pipe = master.pipeline(transaction=True)
            pipe.incr(f"witness:{k}:count")
            pipe.rpush(f"witness:{k}:list", acknowledged)
            pipe.execute()
            acknowledged += 1
            if acknowledged % 10 == 0:
                master.get(f"witness:{k}:count")
                reads += 1
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ReadOnlyError, redis.exceptions.ResponseError):
            failed += 1
            time.sleep(0.05)
    host, port = sentinel.discover_master(name)
    # What each sentinel says (for a failure message): SENTINEL MASTERS, which redis-py reads.
    views = []
    for s in sentinel.sentinels:
        m = s.sentinel_masters().get(name, {})
        flags = sorted(k for k, v in m.items() if k.startswith("is_") and v)
        views.append(f"{m.get('ip')}:{m.get('port')} {','.join(flags)}")
    print(json.dumps({"acknowledged": acknowledged, "failed": failed, "reads": reads,
                      "master": f"{host}:{port}", "sentinels": views}))


if __name__ == "__main__":
    main()
