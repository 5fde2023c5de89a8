"""A fake FusionPBX web server for tests, written from FusionPBX's own source (github:fusionpbx/fusionpbx,
master @ c7a00dcb3e; the 5.5 behaviour from docs/reference/vendors.md §7.3a):

- resources/require.php:97-102   session cookie `PHPSESSID` (path=/; secure; HttpOnly; SameSite=Lax);
- resources/check_auth.php       an unauthorised request runs the authentication plugins; failure →
                                 `302 Location: /?path=<urlencoded PHP_SELF>`; success without `key` →
                                 `302 /core/dashboard/` (the page does not run); an authorised session whose
                                 User-Agent hash changed → `302 /logout.php`, and the page STILL runs;
- core/authentication/resources/classes/plugins/database.php:95-190
                                 no `username` and no `key` → 200 login form (with a `login` token on
                                 master); master validates that token first (else `302 Location: login.php`);
                                 `key` counts only when longer than 30 characters and equal to the user's key;
                                 the domain is `domain_name`, else the Host header;
- resources/classes/token.php    token name/hash are two sha256 HMAC hex strings kept in the session;
- app/click_to_call/click_to_call.php:37-232
                                 permission `click_to_call_view` else body `access denied`; with both `src`
                                 and `dest` in the query it builds a blocking `api originate …` (kept in
                                 `commands` exactly as the PHP concatenates it) and prints
                                 `<strong><src> has called <dest></strong>` and `<br />RESULT<br /><br />`.

`originate(cmd)` is what the box's FreeSWITCH answers (default `+OK <uuid>`); set `esl_down` to get
"Connection to Event Socket failed.".
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

PATH = "/app/click_to_call/click_to_call.php"


@dataclass
class User:
    username: str
    password: str
    domain: str
    api_key: str = ""
    permissions: set[str] = field(default_factory=lambda: {"click_to_call_view", "click_to_call_call"})


@dataclass
class PhpSession:
    authorized: bool = False
    user_hash: str = ""
    user: User | None = None
    tokens: list[tuple[str, str]] = field(default_factory=list)


class FusionPbxPeer:
    def __init__(self, users: list[User], *, version: str = "master", extensions: set[str] | None = None) -> None:
        self.users = users
        self.version = version  # "master" (login token, PR #7968) or "5.5" (no token)
        self.extensions = extensions if extensions is not None else {"100", "101"}
        self.sessions: dict[str, PhpSession] = {}
        self.commands: list[str] = []  # every `api originate` the page sent to FreeSWITCH
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path+query, headers
        self.esl_down = False
        self.originate: Callable[[str], str] = lambda cmd: f"+OK {uuid.uuid4()}\n"
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                peer._handle(self, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
                peer._handle(self, {k: v[-1] for k, v in form.items()})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> FusionPbxPeer:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ one request, as PHP runs it

    def _handle(self, h: BaseHTTPRequestHandler, post: dict[str, str]) -> None:
        url = urlsplit(h.path)
        get = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        request = {**get, **post}  # $_REQUEST
        self.requests.append((h.command, h.path, dict(h.headers)))
        out = _Response()
        with self._lock:
            session = self._session_start(h, out)
            if url.path != PATH:
                if session.authorized:
                    out.body = "<html>dashboard</html>"
                else:
                    out.status, out.location = 302, "/?path=" + quote(url.path, safe="")
                return out.send(h)
            self._check_auth(h, session, request, out)
        if out.done:
            return out.send(h)
        self._click_to_call(session, get, out)
        out.send(h)

    def _session_start(self, h: BaseHTTPRequestHandler, out: _Response) -> PhpSession:
        match = re.search(r"PHPSESSID=([A-Za-z0-9,-]+)", h.headers.get("Cookie") or "")
        if match and match[1] in self.sessions:
            return self.sessions[match[1]]
        sid = secrets.token_hex(13)
        self.sessions[sid] = PhpSession()
        out.headers.append(("Set-Cookie", f"PHPSESSID={sid}; path=/; secure; HttpOnly; SameSite=Lax"))
        return self.sessions[sid]

    def _check_auth(
        self, h: BaseHTTPRequestHandler, session: PhpSession, request: dict[str, str], out: _Response
    ) -> None:
        ua_hash = hashlib.sha256((h.headers.get("User-Agent") or "").encode()).hexdigest()
        if session.authorized and session.user_hash != ua_hash:
            # session_destroy() + header(Location) but no exit: $_SESSION still says authorized.
            out.status, out.location = 302, "/logout.php"
            return
        if session.authorized:
            return
        if not request.get("username") and not request.get("key"):
            name, value = secrets.token_hex(32), secrets.token_hex(32)
            if self.version == "master":
                session.tokens.append((name, value))
            out.body = _login_form(name, value if self.version == "master" else None)
            out.done = True
            return
        if self.version == "master" and not any(request.get(n) == v for n, v in session.tokens):
            out.status, out.location, out.done = 302, "login.php", True
            return
        domain = request.get("domain_name") or (h.headers.get("Host") or "").split(":")[0]
        user = self._authenticate(request, domain)
        if user is None:
            out.status, out.location, out.done = 302, "/?path=" + quote(PATH, safe=""), True
            return
        session.authorized, session.user_hash, session.user = True, ua_hash, user
        if "key" not in request:
            out.status, out.location, out.done = 302, "/core/dashboard/", True

    def _authenticate(self, request: dict[str, str], domain: str) -> User | None:
        key = request.get("key", "")
        for user in self.users:
            if user.domain != domain:
                continue
            by_key = len(key) > 30 and key == user.api_key
            by_password = (
                len(key) <= 30
                and request.get("username", "").lower() == user.username.lower()
                and request.get("password") == user.password
            )
            if by_key or by_password:
                return user
        return None

    def _click_to_call(self, session: PhpSession, get: dict[str, str], out: _Response) -> None:
        user = session.user
        assert user is not None
        if "click_to_call_view" not in user.permissions:
            out.body = "access denied"
            return
        page = ["<html><head><title>Click to Call</title></head><body>\n"]
        if "src" in get and "dest" in get:
            src = re.sub(r"[() ]", "", get["src"])
            dest = get["dest"]
            dest = re.sub(r"[() ]", "", dest) if "@" in dest else re.sub(r"[.()\- ]", "", dest)
            if self.esl_down:
                page.append("<div align='center'><strong>Connection to Event Socket failed.</strong></div>" * 2)
            else:
                cmd = "originate " + self._source(user, src, dest) + self._destination(user, src, dest)
                page.append(
                    f"<div align='center'><strong>{html.escape(src)} has called {html.escape(dest)}</strong></div>\n"
                )
                self.commands.append(cmd)
                result = self.originate(cmd).strip()
                page.append(f"<div align='center'><br />{html.escape(result)}<br /><br /></div>\n")
        page.append(_FORM)
        out.body = "".join(page)

    def _source(self, user: User, src: str, dest: str) -> str:
        direction = "local" if dest in self.extensions else "outbound"
        common = (
            "{click_to_call=true,origination_caller_id_name='',origination_caller_id_number=,instant_ringback=true"
            f",ringback=\\'%(2000,4000,440.0,480.0)\\',presence_id={src}@{user.domain},call_direction={direction}"
        )
        if src in self.extensions:
            domain = f",domain_uuid=d0000000-0000-0000-0000-000000000001,domain_name={user.domain}"
            return f"{common}{domain}}}user/{src}@{user.domain}"
        return common + "}sofia/gateway/outbound/" + src

    def _destination(self, user: User, src: str, dest: str) -> str:
        if dest in self.extensions:
            return f" &transfer('{dest} XML {user.domain}')"
        if "click_to_call_call" not in user.permissions:
            return ""  # $switch_cmd never set: PHP concatenates null
        if "@" in dest:
            caller = "origination_caller_id_name='',origination_caller_id_number=,call_direction=outbound"
            return f" &bridge({{{caller}}}sofia/external/{dest})"
        return f" &transfer('{dest} XML {user.domain}')"


@dataclass
class _Response:
    status: int = 200
    location: str | None = None
    body: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False

    def send(self, h: BaseHTTPRequestHandler) -> None:
        status, location = self.status, self.location
        data = self.body.encode()
        h.send_response(status)
        for name, value in self.headers:
            h.send_header(name, value)
        if status == 302 and location:
            h.send_header("Location", location)
        h.send_header("Content-Type", "text/html; charset=UTF-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def _login_form(token_name: str, token_hash: str | None) -> str:
    """core/authentication/resources/views/login.htm, the fields that matter."""
    token = f"\t\t\t\t\t<input type='hidden' name='{token_name}' value='{token_hash}'>\n" if token_hash else ""
    return (
        "<html><head><title>Login</title></head><body>\n"
        "\t\t\t\t<form method='post' name='frm' action=''>\n"
        "\t\t\t\t\t\t<input type='text' class='txt login' name='username' id='username' />\n"
        "\t\t\t\t\t\t<input type='password' class='txt login' name='password' placeholder=\"Password\" /><br />\n"
        f"{token}\t\t\t\t</form>\n</body></html>\n"
    )


_FORM = (
    '<form method="get">\n'
    "\t\t<input name=\"src\" value='' class='formfld'>\n"
    "\t\t<input name=\"dest\" value='' class='formfld'>\n"
    "</form>\n</body></html>\n"
)
