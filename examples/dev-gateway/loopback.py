#!/usr/bin/env python3
"""The dev gateway's stand-ins for the internet (examples/run-gateway.sh), on loopback only.

* A DNS server (UDP) that answers every A query with 127.0.0.1, so whatever name the gateway is
  asked for (api.partner.test, pypi.org, ...) it dials this machine and nothing else. The Gateway
  document's `dns.resolvers` points Envoy's resolver (c-ares) here; the system's DNS is untouched.
* An HTTP upstream that answers every request 200 with the Host it was asked for.

    python3 examples/dev-gateway/loopback.py --dns 127.0.0.1:18053 --http 127.0.0.1:18080
"""

import argparse
import http.server
import socket
import struct
import sys
import threading

LOOPBACK = "127.0.0.1"


def dns_answer(query: bytes) -> bytes | None:
    """The response to one DNS query: A 127.0.0.1 for an A (or ANY) question, else no records."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:  # a response, or not one question
        return None
    i = 12
    while i < len(query) and query[i] != 0:
        if query[i] & 0xC0:  # no compression in questions
            return None
        i += 1 + query[i]
    if i + 5 > len(query):
        return None
    question = query[12 : i + 5]
    qtype, qclass = struct.unpack("!HH", query[i + 1 : i + 5])
    answers = b""
    if qclass == 1 and qtype in (1, 255):
        # Name: a pointer to the question's (offset 12); type A, class IN, TTL 5 s, 4 bytes.
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(LOOPBACK)
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", ident, 0x8400 | rd | 0x0080, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def serve_dns(sock):
    while True:
        query, peer = sock.recvfrom(512)
        answer = dns_answer(query)
        if answer is not None:
            sock.sendto(answer, peer)


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = f"upstream dev-gateway: {self.command} host {self.headers.get('host', '?')} path {self.path}\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = answer

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: " + (fmt % args) + "\n")


def loopback_addr(text):
    host, _, port = text.rpartition(":")
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError(f"{text}: only 127.0.0.0/8 addresses")
    return host, int(port)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dns", type=loopback_addr, required=True, help="UDP address of the DNS server")
    p.add_argument("--http", type=loopback_addr, required=True, help="address of the HTTP upstream")
    args = p.parse_args()
    httpd = http.server.ThreadingHTTPServer(args.http, Upstream)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(args.dns)
    threading.Thread(target=serve_dns, args=(dns,), daemon=True).start()
    print(f"loopback: DNS on {args.dns[0]}:{args.dns[1]} (every name -> {LOOPBACK}), "
          f"HTTP upstream on {args.http[0]}:{args.http[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
