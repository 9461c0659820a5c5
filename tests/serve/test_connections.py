"""HTTP connections under hostile clients, against a real server process over raw sockets.

Oversize heads get 431 before they are read to the end; slow heads and bodies get 408;
idle connections are closed; 1,100 idle or slow connections on a server limited to
1,024 descriptors do not keep health probes from being answered.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import time

import pytest

from helpers.serve import serve_process

LIMIT = 4096  # --max-header-bytes for these tests


def _connect(srv, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.http_port), timeout=timeout)


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response read off ``s`` (the server closes after these)."""
    data = b""
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), body


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("conn"), "--max-header-bytes", str(LIMIT), "--max-headers", "20",
                       "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1") as s:
        yield s


def test_an_oversize_header_line_is_answered_431_before_it_is_read_to_the_end(srv):
    s = _connect(srv)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    chunk = b"a" * 65536
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < 32 << 20:  # the 32 MiB header line of the issue
            s.sendall(chunk)
            sent += len(chunk)
    assert sent < 32 << 20, "the server read a 32 MiB header line without refusing it"
    status, body = _read_response(s)
    s.close()
    assert status == 431 and f"over {LIMIT} bytes" in json.loads(body)["error"]
    assert srv.request("GET", "/v2/health/live")[0] == 200


@pytest.mark.parametrize("count, expect", [(19, 200), (21, 431)])
def test_header_fields_are_counted(srv, count, expect):
    headers = {f"X-H{i}": "v" for i in range(count - 1)}  # http.client adds Host (and Accept-Encoding)
    status, body, _ = srv.request("GET", "/v2/health/live", headers=headers)
    assert status == expect, body
    if expect == 431:
        assert "more than 20 header fields" in json.loads(body)["error"]


def test_a_head_just_under_the_limit_is_served_and_one_just_over_is_431(srv):
    for size, expect in ((LIMIT - 200, 200), (LIMIT + 10, 431)):
        status, _, _ = srv.request("GET", "/v2/health/live", headers={"X-Pad": "p" * size})
        assert status == expect, size


def test_a_slow_head_gets_408_and_is_closed(srv):
    s = _connect(srv)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    status, body = _read_response(s)
    s.close()
    assert status == 408 and "request head was not received within 1 s" in json.loads(body)["error"]


def test_a_slow_body_gets_408_from_the_route_reading_it(srv):
    s = _connect(srv)
    s.sendall(f"POST /v2/models/{srv.name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
              + b"{" * 10)
    status, body = _read_response(s)
    s.close()
    assert status == 408 and "request body was not received within 1 s" in json.loads(body)["error"]


def test_a_slow_body_no_route_reads_is_cut_off_after_its_deadline(srv):
    s = _connect(srv)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
    s.settimeout(10)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 ")  # answered without reading the body
    assert _closed_by_server(s, within=10)  # the rest of the body never came: dropped (1 s + 2 s grace)
    s.close()


def test_pipelined_requests_are_all_answered(srv):
    s = _connect(srv)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    data = b""
    while data.count(b"HTTP/1.1 200 ") < 4 or b'"name":"acl_bundle"' not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    s.close()


def test_idle_connections_are_closed_before_and_after_a_request(srv):
    quiet = _connect(srv)  # never sends anything
    used = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    used.request("GET", "/v2/health/live")
    assert used.getresponse().read() == b""
    assert _closed_by_server(quiet, within=10)
    assert _closed_by_server(used.sock, within=10)
    quiet.close()
    used.close()


def _limit_fds():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_1100_idle_and_slow_connections_do_not_stop_health_probes(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    # long timeouts: the connections are held by the attack, not dropped by the deadlines
    with serve_process(tmp_path, "--header-timeout", "120", "--keep-alive-timeout", "120",
                       preexec_fn=_limit_fds) as srv:
        attack: list[socket.socket] = []
        try:
            for _ in range(1100):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", srv.http_port))
                attack.append(s)
            time.sleep(1.0)
            for i, s in enumerate(attack):  # half stay idle, half start a head they never finish
                if i % 2:
                    with contextlib.suppress(OSError):
                        s.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            time.sleep(0.5)
            answered = []
            for _ in range(10):
                t0 = time.monotonic()
                with contextlib.suppress(OSError):
                    status, _, _ = srv.request("GET", "/v2/health/ready", timeout=1)
                    answered.append((status, time.monotonic() - t0))
            assert len(answered) == 10 and all(st == 200 for st, _ in answered), answered
            closed = 0
            for s in attack:  # the server made room by closing the oldest idle (then slow) connections
                try:
                    closed += s.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            assert closed >= 1100 - 1000, closed
        finally:
            for s in attack:
                s.close()
        assert "max_connections 1000 lowered to 880" in srv.log(), srv.log()
        assert srv.request("GET", "/v2/health/ready")[0] == 200


def test_past_the_limit_with_every_connection_busy_only_health_is_answered(tmp_path):
    # three requests wait 3 s for their batch: all three connections busy, none can be closed to make room
    with serve_process(tmp_path, "--max-connections", "3", "--max-queue-delay-us", "3000000") as srv:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]})
        busy = []
        for _ in range(3):
            s = _connect(srv)
            s.sendall(f"POST /v2/models/{srv.name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                      f"{body}".encode())
            busy.append(s)
        time.sleep(0.3)
        assert srv.request("GET", "/v2/health/ready")[0] == 200
        status, data, hdrs = srv.request("GET", "/v2")
        assert status == 503 and "connection limit" in json.loads(data)["error"] and hdrs["connection"] == "close"
        for s in busy:  # the busy requests were not disturbed
            s.settimeout(10)
            head = s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 "), head[:200]
            s.close()
