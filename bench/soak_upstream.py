#!/usr/bin/env python3
"""soak_upstream.py PORT ROOT [KEY]: a Hex repository from files under ROOT on 127.0.0.1:PORT,
with strong ETags and 304s. With KEY: every answer is `Cache-Control: private`, and only to
`Authorization: KEY`. Started (and killed, stopped, restarted) by soak.py, the driver of
bench/soak.sh."""
import hashlib
import http.server
import os
import sys

port, root = int(sys.argv[1]), sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else None
files = {}
for dirpath, _, names in os.walk(root):
    for name in names:
        full = os.path.join(dirpath, name)
        with open(full, 'rb') as f:
            body = f.read()
        files['/' + os.path.relpath(full, root)] = (body, '"%s"' % hashlib.sha256(body).hexdigest()[:16])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def answer(self, status, body=b'', headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def do_GET(self):
        if key is not None and self.headers.get('Authorization') != key:
            return self.answer(401, b'unauthorized')
        found = files.get(self.path.split('?')[0])
        if found is None:
            return self.answer(404, b'not found')
        body, etag = found
        cc = ('Cache-Control', 'private, max-age=60' if key else 'public, max-age=60')
        if self.headers.get('If-None-Match') == etag:
            return self.answer(304, b'', [('ETag', etag), cc])
        self.answer(200, body, [('ETag', etag), cc, ('Content-Type', 'application/octet-stream')])

    do_HEAD = do_GET


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


Server(('127.0.0.1', port), Handler).serve_forever()
