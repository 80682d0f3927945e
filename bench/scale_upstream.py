#!/usr/bin/env python3
"""scale_upstream.py PORT ROOT DELAY_MS LOG: the files under ROOT as a Hex repository on
127.0.0.1:PORT, for bench/scale.sh. Every answer waits DELAY_MS first (a distant upstream's
round trip), on its own thread, so concurrent requests wait together. Files are read from disk
per request (nothing is held in memory, whatever the repository's size), with a strong ETag
and Last-Modified; a matching If-None-Match or If-Modified-Since gets a 304. Each request
appends `STATUS PATH` to LOG."""
import email.utils
import http.server
import os
import sys
import threading
import time

port, root, delay, log_path = int(sys.argv[1]), os.path.realpath(sys.argv[2]), float(sys.argv[3]) / 1000, sys.argv[4]
log = open(log_path, 'a', buffering=1)
log_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    # The head and the body are separate writes: with Nagle's algorithm the body would wait
    # for the client's delayed ACK of the head, about 40 ms on every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def note(self, status):
        with log_lock:
            log.write(f'{status} {self.path}\n')

    def answer(self, status, headers=(), body=b''):
        self.note(status)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def do_GET(self):
        time.sleep(delay)
        rel = self.path.split('?')[0].lstrip('/')
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            return self.answer(404, body=b'not found')
        st = os.stat(full)
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        common = [('ETag', etag), ('Last-Modified', modified), ('Cache-Control', 'public, max-age=60')]
        inm, ims = self.headers.get('If-None-Match'), self.headers.get('If-Modified-Since')
        if (inm is not None and etag in [t.strip() for t in inm.split(',')]) or (inm is None and ims == modified):
            return self.answer(304, common)
        self.note(200)
        self.send_response(200)
        for k, v in common + [('Content-Type', 'application/octet-stream')]:
            self.send_header(k, v)
        self.send_header('Content-Length', str(st.st_size))
        self.end_headers()
        if self.command != 'HEAD':
            with open(full, 'rb') as f:
                self.wfile.flush()
                self.connection.sendfile(f)

    do_HEAD = do_GET


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


Server(('127.0.0.1', port), Handler).serve_forever()
