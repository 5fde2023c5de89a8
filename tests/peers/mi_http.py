"""An OpenSIPS 3.4 mi_http peer for tests: raw HTTP/1.1 on 127.0.0.1, shaped byte for byte on real captures.

Sources (tests/peers/captures/opensips-3.4.18/ unless said otherwise):

- `mi_basic_transcript.txt`: replies are `HTTP/1.1 200 OK`, then `Date:`, `Content-Type: application/json`,
  `Content-Length:` and a compact JSON body `{"jsonrpc":"2.0","result":…,"id":…}`; the connection stays open
  (keep-alive) unless the request said `Connection: close`, in which case `Connection: close` comes right after
  `Date:` and the server closes (`mi_errors_transcript.txt`). `version`, `uptime`, `which`, `b2b_list`;
  an unknown method is `-32601 Method not found` inside HTTP 200.
- `mi_errors_transcript.txt`: `GET /mi` gets `405 Method Not Allowed` headers with `Transfer-Encoding: chunked` and
  then nothing, the connection held open; truncated JSON is `-32700 Parse error` with `"id":null`; no `jsonrpc`
  member is `-32600 Invalid Request`; a positional param to `version` is echoed as `"unknown":"unknown"`; a POST
  to another path is `400 Bad Request` `text/html` `<html><body>Unable to parse URL!</body></html>`;
  `dlg_end_dlg` on an unknown id is `404 Requested Dialog not found` inside HTTP 200.
- `mi_b2b_transcript.txt`: `b2b_trigger_scenario` answers `"OK"` only; `b2b_list` tuple shape; `b2b_terminate_call`
  answers `"OK"`, then `404 B2B session not found`; too few params is `-32602 Invalid params` with
  `"data":"Too few or too many parameters"`; an entity without URI is `400 Missing destination URI for entity1`.
- `mi_b2b_busy_transcript.txt`: a refusal by the first party leaves `b2b_list` empty at once; a busy callee's
  tuple stays listed in state 5 with only the callee entity.
- `mi_b2b_ringing_transcript.txt`: a ringing callee shows tuple state 3, callee entity state 0.
- `cache_fetch` is not in the shared captures: its shapes (`{"key":…,"value":…}`, and `400 Value not found`
  inside HTTP 200) are from OpenSIPS 3.4.18 `mi/mi_core.c` `mi_cachefetch` and were captured from the lab's
  real OpenSIPS running deploy/opensips/opensips.cfg (docs/opensips.md, "Captured").

What the peer models beyond the wire: the cachedb_local entries that deploy/opensips/opensips.cfg writes for a
click-to-call (`ifbus:<tag>:key` at once, then `ifbus:<tag>:a` and, once `a` answered, `ifbus:<tag>:b`), on a
schedule per party (`behaviour`, keyed by the URI's user part). Fault hooks: `split` (every reply written in
small pieces), `drop_next(method)` (request read, connection closed, nothing answered),
`stall_next(method)` (request read, never answered), `keepalive_stalls` (on by default: a second request
on a kept-alive connection is never answered, as measured on the lab's OpenSIPS), `close_after_reply`
(a connection is closed right after a reply, as a restarted server would). Every request is recorded in `requests`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

SERVER = "OpenSIPS (3.4.18 (x86_64/linux))"
# `which` on the lab build (mi_basic_transcript.txt), plus cache_* which every build has (mi_core.c).
WHICH = [
    "get_statistics", "list_statistics", "reset_statistics", "reset_all_statistics", "uptime", "version", "pwd",
    "arg", "which", "ps", "kill", "log_level", "xlog_level", "log_level_filter", "log_mute_state", "shm_check",
    "cache_store", "cache_fetch", "cache_remove", "event_subscribe", "events_list", "subscribers_list",
    "raise_event", "list_tcp_conns", "mem_pkg_dump", "mem_shm_dump", "mem_rpm_dump", "reload_routes",
    "sr_get_status", "sr_list_status", "sr_list_reports", "sr_list_identifiers", "help", "list_blacklists",
    "check_blacklists", "check_blacklist", "add_blacklist_rule", "del_blacklist_rule", "t_uac_dlg",
    "t_uac_cancel", "t_hash", "t_reply", "dlg_list", "dlg_list_ctx", "dlg_end_dlg", "dlg_db_sync",
    "dlg_restore_db", "dlg_cluster_sync", "profile_get_size", "profile_list_dlgs", "profile_get_values",
    "list_all_profiles", "profile_end_dlgs", "dlg_push_var", "dlg_send_sequential", "httpd_list_root_path",
    "b2be_list", "ua_session_client_start", "ua_session_update", "ua_session_reply", "ua_session_terminate",
    "ua_session_list", "b2b_trigger_scenario", "b2b_bridge", "b2b_list", "b2b_terminate_call",
]  # fmt: skip
SCENARIO = "ifbus-c2c"

# Party schedules: (seconds after the leg's INVITE, SIP code). Timer codes (408) use short test timers.
ANSWER = [(0.01, 180), (0.03, 200)]
BEHAVIOURS: dict[str, list[tuple[float, int]]] = {
    "busy": [(0.01, 486)],
    "ring": [(0.01, 180), (0.3, 408)],  # fr_inv_timeout fired: tm's own 408 reaches the b2b reply route
    "gone": [(0.2, 408)],  # fr_timeout: no reply at all
    "unknown": [(0.01, 404)],
    "silent": [],  # nothing is ever recorded (e.g. the config's outcome blocks are missing)
}


@dataclass
class Recorded:
    method: str  # HTTP method
    path: str
    headers: dict[str, str]
    body: bytes
    rpc: str = ""  # JSON-RPC method, when the body parsed

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Session:
    key: str
    tag: str | None
    scenario: str
    a_uri: str
    b_uri: str
    b_id: str = "b"
    state: int = 1
    legs: dict[str, int] = field(default_factory=dict)  # latest code per leg
    ended: bool = False
    dlg: str = ""


class MiHttpPeer:
    """Serve mi_http on a free loopback port; use as a context manager. `url` is `http://127.0.0.1:<port>/mi`."""

    def __init__(self, root: str = "mi", uptime: int = 7265) -> None:
        self.root = root
        self.uptime = uptime
        self.behaviour: dict[str, list[tuple[float, int]]] = dict(BEHAVIOURS)
        self.cache: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}
        self.requests: list[Recorded] = []
        self.terminated: list[str] = []  # keys of sessions b2b_terminate_call ended
        # OpenSIPS 3.4.18 left 26 of 300 requests on kept-alive connections unanswered (docs/opensips.md):
        # the peer is no kinder, it never answers a second request on a connection.
        self.keepalive_stalls = True
        self.config_blocks = True  # False: an OpenSIPS without the IF.bus blocks (nothing is recorded)
        self.require_basic: str | None = None  # "user:secret": answer 401 like an authenticating reverse proxy
        self.reuse_keys = False  # hand out the same key again once its session is gone, as b2b_logic does
        self.split = False
        self.close_after_reply = False
        self._drop: set[str] = set()
        self._stall: set[str] = set()
        self._lock = threading.Lock()
        self._keys = itertools.count(415)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._timers: list[threading.Timer] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.root}"

    def __enter__(self) -> MiHttpPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        for timer in self._timers:
            timer.cancel()
        with contextlib.suppress(OSError):
            self._sock.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    # ------------------------------------------------------------ test hooks

    def drop_next(self, method: str) -> None:
        self._drop.add(method)

    def stall_next(self, method: str) -> None:
        self._stall.add(method)

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.rpc == method]

    # ------------------------------------------------------------ HTTP

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        served = 0
        try:
            while not self._stopped.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                record = Recorded(method, path, headers, body)
                self.requests.append(record)
                served += 1
                if served > 1 and self.keepalive_stalls:
                    self._stopped.wait()  # measured on the lab: a kept-alive connection's later request may hang
                    return
                close = headers.get("connection", "").lower() == "close"
                if not self._answer(conn, record, close) or close or self.close_after_reply:
                    return
        except (OSError, ValueError):
            return
        finally:
            self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, record: Recorded, close: bool) -> bool:
        """Write the reply; False when the connection must end without one."""
        date = formatdate(usegmt=True)
        if record.method == "GET":
            # mi_errors_transcript.txt: headers, an empty line, then nothing; the server keeps the socket open.
            self._write(
                conn,
                f"HTTP/1.1 405 Method Not Allowed\r\nDate: {date}\r\nConnection: close\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode(),
            )
            self._stopped.wait()
            return False
        if self.require_basic is not None and not _basic_ok(record.headers.get("authorization"), self.require_basic):
            body = b"Unauthorized\n"  # not OpenSIPS: the reverse proxy the docs tell users to put in front
            self._reply(conn, "401 Unauthorized", "text/plain", body, date, close)
            return True
        if record.path.split("?")[0].rstrip("/") != f"/{self.root}":
            body = b"<html><body>Unable to parse URL!</body></html>"
            self._reply(conn, "400 Bad Request", "text/html", body, date, close)
            return True
        reply = self._rpc(record)
        if reply is None:
            return False
        self._reply(conn, "200 OK", "application/json", reply, date, close)
        return True

    def _reply(self, conn: socket.socket, status: str, ctype: str, body: bytes, date: str, close: bool) -> None:
        connection = "Connection: close\r\n" if close else ""
        head = (
            f"HTTP/1.1 {status}\r\nDate: {date}\r\n{connection}"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._write(conn, head.encode() + body)

    def _write(self, conn: socket.socket, data: bytes) -> None:
        if not self.split:
            conn.sendall(data)
            return
        for i in range(0, len(data), 7):
            conn.sendall(data[i : i + 7])
            time.sleep(0.0005)

    # ------------------------------------------------------------ JSON-RPC

    def _rpc(self, record: Recorded) -> bytes | None:
        try:
            request = json.loads(record.body)
        except ValueError:
            return _encode({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None})
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or "method" not in request:
            return _encode({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": rid})
        method = str(request["method"])
        record.rpc = method
        if method in self._drop:
            self._drop.discard(method)
            return None
        if method in self._stall:
            self._stall.discard(method)
            self._stopped.wait()
            return None
        params = request.get("params")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _encode({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": rid})
        with self._lock:
            outcome = handler(params)
        if isinstance(outcome, _Error):
            error: dict[str, Any] = {"code": outcome.code, "message": outcome.message}
            if outcome.data is not None:
                error["data"] = outcome.data
            return _encode({"jsonrpc": "2.0", "error": error, "id": rid})
        return _encode({"jsonrpc": "2.0", "result": outcome, "id": rid})

    # ------------------------------------------------------------ methods

    def _m_version(self, params: Any) -> Any:
        result = {"Server": SERVER}
        if isinstance(params, list) and params:
            result["unknown"] = "unknown"
        return result

    def _m_uptime(self, params: Any) -> Any:
        now = time.time()
        fmt = "%a %b %d %H:%M:%S %Y"
        return {
            "Now": time.strftime(fmt, time.gmtime(now)),
            "Up since": time.strftime(fmt, time.gmtime(now - self.uptime)),
            "Up time": f"{self.uptime} [sec]",
        }

    def _m_which(self, params: Any) -> Any:
        return list(WHICH)

    def _m_cache_fetch(self, params: Any) -> Any:
        if not isinstance(params, dict) or set(params) != {"system", "attr"}:
            return _PARAMS
        value = self.cache.get(str(params["attr"])) if params["system"] == "local" else None
        if value is None:
            return _Error(400, "Value not found")
        return {"key": params["attr"], "value": value}

    def _m_dlg_end_dlg(self, params: Any) -> Any:
        return _Error(404, "Requested Dialog not found")

    def _m_b2b_terminate_call(self, params: Any) -> Any:
        if not isinstance(params, dict) or set(params) != {"key"}:
            return _PARAMS
        wanted = str(params["key"])
        session = self.sessions.get(wanted) or next((s for s in self.sessions.values() if s.dlg == wanted), None)
        if session is None:
            return _Error(404, "B2B session not found")
        if session.state == 5:  # lingering refused tuple: OK, only its expiry moves (transcripts/README.md)
            return "OK"
        session.ended = True
        del self.sessions[session.key]
        self.terminated.append(session.key)
        return "OK"

    def _m_b2b_list(self, params: Any) -> Any:
        tuples = []
        for n, s in enumerate(self.sessions.values()):
            entities = []
            for index, (eid, uri, peer) in enumerate((("a", s.a_uri, s.b_uri), ("b", s.b_uri, s.a_uri))):
                if eid not in s.legs or (s.state == 5 and eid == "a"):
                    continue
                entities.append({
                    "index": index, "scenario_id": eid, "key": f"B2B.{s.key.split('.')[0]}.{index}",
                    "disconnected": 0, "state": 1 if s.legs[eid] == 200 else 0, "no": index, "type": 1,
                    "to_uri": uri, "from_uri": peer,
                })  # fmt: skip
            tuples.append({
                "id": n, "key": s.key, "state": s.state, "lifetime": 43207, "db_flag": 2, "scenario": s.scenario,
                "SERVERS": [], "CLIENTS": entities, "BRIDGE_ENTITIES": entities,
            })  # fmt: skip
        return {"Tuples": tuples}

    def _m_b2b_trigger_scenario(self, params: Any) -> Any:
        if not isinstance(params, dict) or not {"scenario_id", "entity1", "entity2"} <= set(params):
            return _PARAMS
        if set(params) - {"scenario_id", "entity1", "entity2", "context"}:
            return _PARAMS
        parts = []
        for name in ("entity1", "entity2"):
            fields = str(params[name]).split(",")
            if not fields[0]:
                return _Error(400, f"Missing ID for {name}")
            if len(fields) < 2 or not fields[1]:
                return _Error(400, f"Missing destination URI for {name}")
            parts.append(fields)
        if any(f[1].split("@")[-1].split(";")[0].endswith(".invalid") for f in parts):
            # Real capture (docs/opensips.md): "could not resolve hostname" → nothing sent, no session.
            return _Error(500, "Failed to initialize scenario")
        context: dict[str, str] = {}
        for item in params.get("context") or []:
            k, sep, v = str(item).partition("=")
            if not sep:
                return _Error(400, "Bad format for context value")
            context[k] = v
        key = "547.0" if self.reuse_keys and "547.0" not in self.sessions else f"{next(self._keys)}.0"
        session = Session(key, context.get("ifbus"), str(params["scenario_id"]), parts[0][1], parts[1][1], parts[1][0])
        self.sessions[key] = session
        if self._records(session):
            self.cache[f"ifbus:{session.tag}:key"] = key  # the config's local_route, before "OK"
            self.cache[f"ifbus:b2b:{key}"] = session.tag
        self._leg(session, parts[0][0], "a")
        return "OK"

    # ------------------------------------------------------------ the call, as the config records it

    def _leg(self, session: Session, entity_id: str, leg: str) -> None:
        uri = session.a_uri if leg == "a" else session.b_uri
        user = uri.split(":", 1)[-1].split("@", 1)[0]
        for delay, code in self.behaviour.get(user, ANSWER):
            timer = threading.Timer(delay, self._reply_seen, args=(session, entity_id, leg, code))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _records(self, session: Session) -> bool:
        return self.config_blocks and session.scenario == SCENARIO and bool(session.tag)

    def _reply_seen(self, session: Session, entity_id: str, leg: str, code: int) -> None:
        with self._lock:
            if session.ended or session.legs.get(leg, 0) >= 200:
                return
            session.legs[leg] = code
            cache_key = f"ifbus:{session.tag}:{entity_id}"
            if self._records(session):
                self.cache[cache_key] = str(code)
            if code >= 300:
                if leg == "a":
                    self.sessions.pop(session.key, None)  # first party refused: gone at once
                else:
                    session.state = 5  # callee refused: lingers
            elif code == 200 and leg == "a":
                session.state = 3
                # b2b_entities uses the entity key as the Call-ID; SIPp's To-tag, then OpenSIPS's From-tag.
                entity = f"B2B.{session.key.split('.')[0]}.4810432.1796058998.840449915"
                session.dlg = f"{entity};31209SIPpTag017;{session.tag}"
                if self._records(session):
                    self.cache[f"ifbus:{session.tag}:dlg"] = session.dlg
                self._leg(session, session.b_id, "b")
            elif code == 200:
                session.state = 4


@dataclass
class _Error:
    code: int
    message: str
    data: str | None = None


_PARAMS = _Error(-32602, "Invalid params", "Too few or too many parameters")


def _basic_ok(header: str | None, expected: str) -> bool:
    import base64

    return header == "Basic " + base64.b64encode(expected.encode()).decode()


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode()
