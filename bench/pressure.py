#!/usr/bin/env python3
"""Helpers of bench/pressure.sh (see bench/README.md):

  pressure.py origin PORT ROOT LOG FLOOD_DELAY
      A Hex repository from the files under ROOT on 127.0.0.1:PORT (HTTP/1.1, keep-alive).
      Every request is logged to LOG as "UNIX_TIME PATH" when it arrives. /packages/flood_*
      is answered 404 after FLOOD_DELAY seconds; anything else at once (200 or 404).
      SIGUSR1: hang (every request, on new and open connections, is read and never answered);
      SIGUSR2: answer again.

  pressure.py seq MODE BASE_URL MANIFEST TIMES_FILE X_CACHE PATH...
      One client asks for each PATH in turn, like a build tool fetching registry records one
      after another: on one keep-alive connection (MODE keepalive, what rebar3's and Mix's
      httpc do) or on a new connection each (MODE new). Each answer must be a 200 whose body has
      the sha256 MANIFEST gives for it, with an x-cache header among the comma-separated
      X_CACHE ("*": any). Appends each request's time in ms to TIMES_FILE. Prints
      "ok=K bad=B [first=...]"; exit 1 if any answer was wrong.

  pressure.py flood HOST PORT N CONCURRENCY HOLD PREFIX
      N clients, at most CONCURRENCY at a time, each opens a connection, sends
      GET /packages/flood_PREFIX_I and closes it HOLD seconds later (a client timing out)
      without reading an answer. With HOLD 0 some requests may never reach the server's
      handler: it can see the client gone before it dispatches the request.
      Prints "sent=K failed=F seconds=S".
"""
import asyncio
import hashlib
import http.client
import os
import signal
import sys
import time
import urllib.parse


def origin(port, root, log_path, flood_delay):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, 'rb') as f:
                files['/' + os.path.relpath(full, root)] = f.read()
    log = open(log_path, 'a', buffering=1)
    state = {'hang': False}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b'\r\n\r\n')
                lines = head.decode('latin-1').split('\r\n')
                parts = lines[0].split(' ')
                if len(parts) != 3:
                    break
                path = urllib.parse.urlsplit(parts[1]).path
                log.write('%.3f %s\n' % (time.time(), path))
                if state['hang']:
                    while await reader.read(65536):  # never answer; notice when the peer leaves
                        pass
                    break
                if path.startswith('/packages/flood_'):
                    await asyncio.sleep(flood_delay)
                    status, body = 404, b'not found\n'
                elif path in files:
                    status, body = 200, files[path]
                else:
                    status, body = 404, b'not found\n'
                close = any(l.lower().replace(' ', '') == 'connection:close' for l in lines[1:])
                writer.write(b'HTTP/1.1 %d %s\r\nContent-Type: application/octet-stream\r\n'
                             b'Content-Length: %d\r\n%s\r\n'
                             % (status, b'OK' if status == 200 else b'Not Found', len(body),
                                b'Connection: close\r\n' if close else b''))
                writer.write(body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: state.update(hang=True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: state.update(hang=False))
        server = await asyncio.start_server(handle, '127.0.0.1', port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def seq(mode, base, manifest, times_file, x_cache, paths):
    want = {}
    with open(manifest) as f:
        for line in f:
            p, _, sha = line.split()
            want['/' + p] = sha
    allowed = None if x_cache == '*' else set(x_cache.split(','))
    u = urllib.parse.urlsplit(base)
    conn = None
    ok, bad = 0, []
    with open(times_file, 'a') as out:
        for path in paths:
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
                conn.request('GET', path)
                r = conn.getresponse()
                body = r.read()
                if mode == 'new' or r.getheader('Connection', '').lower() == 'close':
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                bad.append('%s: %s' % (path, e))
                continue
            ms = (time.perf_counter() - started) * 1000
            out.write('%.3f\n' % ms)
            cache = r.getheader('x-cache', '')
            if r.status != 200:
                bad.append('%s: status %d' % (path, r.status))
            elif hashlib.sha256(body).hexdigest() != want.get(path):
                bad.append('%s: wrong bytes (%d)' % (path, len(body)))
            elif allowed is not None and cache not in allowed:
                bad.append('%s: x-cache %r, expected one of %s' % (path, cache, x_cache))
            else:
                ok += 1
    if conn is not None:
        conn.close()
    print('ok=%d bad=%d%s' % (ok, len(bad), (' first=%s' % bad[0]) if bad else ''))
    return 0 if not bad else 1


def flood(host, port, n, concurrency, hold, prefix):
    async def main():
        gate = asyncio.Semaphore(concurrency)
        failed = 0

        async def one(i):
            nonlocal failed
            async with gate:
                try:
                    _, writer = await asyncio.open_connection(host, port)
                    writer.write(b'GET /packages/flood_%s_%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n'
                                 % (prefix.encode(), i, host.encode(), port))
                    await writer.drain()
                    await asyncio.sleep(hold)
                    writer.close()
                    await writer.wait_closed()
                except OSError:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        print('sent=%d failed=%d seconds=%.2f' % (n - failed, failed, time.perf_counter() - started))

    asyncio.run(main())
    return 0


if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'origin':
        origin(int(args[0]), args[1], args[2], float(args[3]))
    elif cmd == 'seq':
        sys.exit(seq(args[0], args[1], args[2], args[3], args[4], args[5:]))
    elif cmd == 'flood':
        sys.exit(flood(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]), args[5]))
    else:
        sys.exit('usage: see the docstring of ' + sys.argv[0])
