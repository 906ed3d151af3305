"""A programmable webhook receiver on loopback for the http delivery tests.

Each path has a script: a list of responses used in order, then a default.  A response is a dict:
  {"status": 200, "body": "...", "headers": {...}}   answer
  {"hang": 30}                                       wait that many seconds before answering 200
  {"drop": True}                                     close the connection without an answer
  {"raw": "text"}                                    send those bytes (no HTTP response), then close
Every request is logged (path, headers, raw body, arrival time t, end time t_end, and conc: the
requests of that path in progress at its arrival, itself included).
tls=(cert, key) serves https; client_ca=path also demands a client certificate signed by that CA.
"""
import http.server
import json
import socket
import threading
import time


class Receiver:
    def __init__(self, host="127.0.0.1", port=0, tls=None, client_ca=None):
        self.lock = threading.Lock()
        self.active = {}
        self.scripts = {}
        self.defaults = {}
        self.by_attempt = {}
        self.log = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                entry = None
                try:
                    entry = self._post()
                finally:
                    with receiver.lock:
                        if entry is not None:
                            receiver.active[entry["path"]] -= 1
                            entry["t_end"] = time.time()

            def _post(self):
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                path = self.path
                entry = {"path": path, "headers": {k.lower(): v for k, v in self.headers.items()},
                         "body": body, "t": time.time()}
                with receiver.lock:
                    receiver.active[path] = receiver.active.get(path, 0) + 1
                    entry["conc"] = receiver.active[path]
                    receiver.log.append(entry)
                    script = receiver.scripts.get(path)
                    if path in receiver.by_attempt:
                        try:
                            attempt = json.loads(body)["attempt"]
                        except (ValueError, KeyError, TypeError):
                            attempt = None
                        resp = receiver.by_attempt[path].get(attempt, {"status": 200})
                    elif script:
                        resp = script.pop(0)
                    else:
                        resp = receiver.defaults.get(path, {"status": 200})
                if resp.get("drop"):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return entry
                if resp.get("raw") is not None:
                    # bytes that are no HTTP response (e.g. HTTP/0.9), then close
                    self.close_connection = True
                    try:
                        self.wfile.write(resp["raw"].encode())
                    except OSError:
                        pass
                    return entry
                if resp.get("hang"):
                    time.sleep(resp["hang"])
                out = resp.get("body", "")
                if not isinstance(out, (bytes, str)):
                    out = json.dumps(out)
                if isinstance(out, str):
                    out = out.encode()
                try:
                    self.send_response(resp.get("status", 200))
                    for k, v in resp.get("headers", {}).items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass
                return entry

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.scheme = "http"
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.port, path)

    def set_default(self, path, response):
        with self.lock:
            self.defaults[path] = response

    def script(self, path, responses, default=None):
        with self.lock:
            self.scripts[path] = list(responses)
            if default is not None:
                self.defaults[path] = default

    def script_by_attempt(self, path, responses):
        """responses: {attempt number from the body: response}; others get 200."""
        with self.lock:
            self.by_attempt[path] = dict(responses)

    def requests(self, path=None):
        with self.lock:
            return [e for e in self.log if path is None or e["path"] == path]

    def wait_requests(self, path, n, timeout):
        end = time.time() + timeout
        while time.time() < end:
            r = self.requests(path)
            if len(r) >= n:
                return r
            time.sleep(0.05)
        return self.requests(path)
