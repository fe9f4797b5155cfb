#!/usr/bin/env python3
"""Integration tests of vigil-authd against real PostgreSQL and Redis.

Every endpoint's happy path, every kind of bad input (status, error code,
and no state change), forged tokens, revocation, restarts of authd and a
Redis outage. Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-authd.py [TEST...]
"""

import contextlib
import hashlib
import hmac
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_error  # noqa: E402

runner = harness.Runner("test-authd")
test = runner.test


def setup(ctx):
    harness.start_authd_stack(ctx)


# --------------------------------------------------------------------------
# helpers

def snapshot(ctx):
    """Everything bad input must leave alone: users, /stats, Redis keys."""
    stats = ctx.authd.get("/stats")
    check_eq(stats.status, 200, "GET /stats")
    return {
        "users": int(ctx.stack.sql("SELECT count(*) FROM auth.users")),
        "stats": stats.body,
        "redis_keys": ctx.stack.redis("DBSIZE"),
    }


@contextlib.contextmanager
def unchanged(ctx, what):
    before = snapshot(ctx)
    yield
    after = snapshot(ctx)
    check(before == after, f"{what}: state changed: before {before}, after {after}")


def user_count(ctx):
    return int(ctx.stack.sql("SELECT count(*) FROM auth.users"))


def stats(ctx):
    r = ctx.authd.get("/stats")
    check_eq(r.status, 200, "GET /stats status")
    return r.body


def cred(username, password="correct horse battery"):
    return {"username": username, "password": password}


def verify(ctx, token, **kw):
    return ctx.authd.post("/verify", token=token, **kw)


def signing_key(ctx):
    """The HMAC key the daemon really signs with, found by re-signing a real
    token's claims ourselves and having the daemon accept it (the control
    for every forged-token test). Tries the credential's bytes as is, then
    hex-decoded."""
    if getattr(ctx, "signing_key", None) is not None:
        return ctx.signing_key
    token, _, _ = harness.new_session(ctx.authd)
    header, payload, _ = harness.jwt_parts(token)
    raw = ctx.jwt_key
    candidates = [("credential bytes", raw), ("credential bytes, trailing space stripped",
                                              raw.strip())]
    with contextlib.suppress(ValueError):
        candidates.append(("hex-decoded credential", bytes.fromhex(raw.decode().strip())))
    for label, key in candidates:
        forged = harness.jwt_sign(header, payload, key)
        if verify(ctx, forged).status == 200:
            if label != "credential bytes":
                runner.note(f"authd signs with the {label}")
            ctx.signing_key = key
            return key
    raise AssertionError("a token re-signed with the jwt-key credential is not accepted; "
                         "cannot build the forged-token tests")


def fresh_claims(ctx):
    """(header, payload, token) of a new real session."""
    token, _, _ = harness.new_session(ctx.authd)
    header, payload, _ = harness.jwt_parts(token)
    return header, payload, token


def check_token_refused(ctx, token, what):
    r = verify(ctx, token)
    check_error(r, 401, "invalid_token", f"/verify with {what}")
    r = ctx.authd.post("/logout", token=token)
    check_error(r, 401, "invalid_token", f"/logout with {what}")


# --------------------------------------------------------------------------
# command line

@test
def test_version_prints_a_version_and_exits_0(ctx):
    p = ctx.authd.run("--version")
    check_eq(p.returncode, 0, f"--version exit status (stderr {p.stderr!r})")
    check(p.stdout.strip(), "--version printed nothing on stdout")


@test
def test_help_exits_0_and_mentions_options(ctx):
    p = ctx.authd.run("--help")
    check_eq(p.returncode, 0, "--help exit status")
    check("--config" in p.stdout and "--check-config" in p.stdout,
          f"--help does not list --config and --check-config: {p.stdout!r}")


@test
def test_check_config_accepts_an_empty_config(ctx):
    p = ctx.authd.run("--config", ctx.authd.config, "--check-config")
    check_eq(p.returncode, 0, f"--check-config on an empty file (stderr {p.stderr!r})")


@test
def test_check_config_rejects_a_bad_value_naming_file_and_key(ctx):
    bad = os.path.join(ctx.authd.dir, "bad.conf")
    with open(bad, "w", encoding="utf-8") as f:
        f.write("# test\n[auth]\ntoken_ttl_seconds = banana\n")
    p = ctx.authd.run("--config", bad, "--check-config")
    check(p.returncode != 0, f"--check-config accepted token_ttl_seconds = banana: {p.stderr!r}")
    out = p.stdout + p.stderr
    check("bad.conf" in out and "token_ttl_seconds" in out,
          f"message does not name the file and the key: {out!r}")


@test
def test_refuses_to_start_without_jwt_key(ctx):
    d = harness.new_authd(ctx)
    d.set_credential("jwt-key", None)
    d.port = harness.free_port()
    p = d.run("--config", d.config, timeout=20)
    check(p.returncode != 0, "authd started without a jwt-key credential")
    check("jwt-key" in p.stderr, f"the message does not name jwt-key: {p.stderr!r}")


@test
def test_refuses_to_start_with_a_short_jwt_key(ctx):
    d = harness.new_authd(ctx, jwt_key=b"0123456789abcdef")  # 16 bytes
    d.port = harness.free_port()
    p = d.run("--config", d.config, timeout=20)
    check(p.returncode != 0, "authd started with a 16-byte jwt-key")
    check("jwt-key" in p.stderr, f"the message does not name jwt-key: {p.stderr!r}")


# --------------------------------------------------------------------------
# happy paths

@test
def test_health_and_ready_answer_200(ctx):
    r = ctx.authd.get("/health")
    check_eq((r.status, r.body), (200, {"status": "ok"}), "GET /health")
    r = ctx.authd.get("/ready")
    check_eq(r.status, 200, f"GET /ready ({r.body!r})")
    check_eq(r.body.get("status"), "ready", "GET /ready status field")


@test
def test_migrations_created_auth_users(ctx):
    owner = ctx.stack.psql("SELECT tableowner FROM pg_tables "
                           "WHERE schemaname = 'auth' AND tablename = 'users'")
    check_eq(owner, "vigil_auth", "owner of auth.users")


@test
def test_register_login_verify_logout(ctx):
    name = harness.unique_name("flow")
    r = ctx.authd.post("/register", cred(name))
    check_eq(r.status, 201, f"POST /register ({r.body!r})")
    uid = r.body.get("user_id")
    check(isinstance(uid, int) and uid > 0, f"user_id is not a positive integer: {r.body!r}")
    check_eq(r.body.get("username"), name, "registered username")

    r = ctx.authd.post("/login", cred(name))
    check_eq(r.status, 200, f"POST /login ({r.body!r})")
    token = r.body.get("token")
    check(isinstance(token, str) and token.count(".") == 2, f"token is not a JWT: {r.body!r}")
    check_eq(r.body.get("user_id"), uid, "login user_id")
    check_eq(r.body.get("expires_in"), 3600, "login expires_in (default TTL)")

    r = verify(ctx, token)
    check_eq(r.status, 200, f"POST /verify ({r.body!r})")
    check_eq(r.body, {"valid": True, "user_id": uid, "username": name}, "verify body")

    r = ctx.authd.post("/logout", token=token)
    check_eq(r.status, 204, f"POST /logout ({r.body!r})")
    check_eq(r.body, b"", "logout body")

    check_error(verify(ctx, token), 401, "invalid_token", "verify after logout")


@test
def test_token_is_hs256_with_the_documented_claims(ctx):
    t0 = int(time.time())
    token, uid, name = harness.new_session(ctx.authd)
    header, payload, sig = harness.jwt_parts(token)
    check_eq(header.get("alg"), "HS256", "JWT alg")
    check_eq(payload.get("sub"), str(uid), "JWT sub")
    check_eq(payload.get("username"), name, "JWT username")
    check(isinstance(payload.get("sid"), str) and payload["sid"], f"JWT sid: {payload!r}")
    exp = payload.get("exp")
    check(isinstance(exp, int) and t0 + 3600 - 5 <= exp <= int(time.time()) + 3600 + 5,
          f"JWT exp {exp!r} is not about now + 3600")
    check_eq(len(sig), 32, "HMAC-SHA256 signature length")


@test
def test_content_type_with_charset_is_accepted(ctx):
    name = harness.unique_name("cs")
    r = ctx.authd.post("/register", json.dumps(cred(name)),
                       headers={"Content-Type": "application/json; charset=utf-8"})
    check_eq(r.status, 201, f"register with 'application/json; charset=utf-8' ({r.body!r})")


@test
def test_password_is_stored_as_a_yescrypt_hash(ctx):
    name = harness.unique_name("hash")
    password = "a distinctive passphrase 9271"
    harness.register(ctx.authd, name, password)
    row = ctx.stack.psql(f"SELECT row_to_json(u)::text FROM auth.users u "
                         f"WHERE username = '{name}'")
    check(row, f"no auth.users row for {name}")
    check(password not in row, "the password is stored in clear text")
    check("$y$" in row, f"no yescrypt hash ($y$) in the row: {row}")


@test
def test_register_duplicate_returns_409_and_changes_nothing(ctx):
    _, name, _ = harness.register(ctx.authd)
    with unchanged(ctx, "duplicate register"):
        r = ctx.authd.post("/register", cred(name, "another password"))
        check_error(r, 409, "username_taken", "duplicate register")
    harness.login(ctx.authd, name, "correct horse battery")  # the first password still works


@test
def test_login_failures_are_indistinguishable_and_create_no_session(ctx):
    _, name, _ = harness.register(ctx.authd)
    with unchanged(ctx, "failed logins"):
        wrong = ctx.authd.post("/login", cred(name, "wrong password!"))
        unknown = ctx.authd.post("/login", cred(harness.unique_name("ghost"), "wrong password!"))
    check_error(wrong, 401, "invalid_credentials", "wrong password")
    check_error(unknown, 401, "invalid_credentials", "unknown user")
    check_eq(wrong.body, unknown.body, "bodies of wrong-password vs unknown-user")


@test
def test_logout_revokes_a_still_unexpired_token(ctx):
    token, _, _ = harness.new_session(ctx.authd)
    check_eq(verify(ctx, token).status, 200, "verify before logout")
    check_eq(ctx.authd.post("/logout", token=token).status, 204, "logout")
    _, payload, _ = harness.jwt_parts(token)
    check(payload["exp"] > time.time() + 60, "the token should still be unexpired")
    check_error(verify(ctx, token), 401, "invalid_token", "verify after logout")
    check_error(ctx.authd.post("/logout", token=token), 401, "invalid_token", "second logout")


@test
def test_logout_of_one_session_leaves_the_others(ctx):
    _, name, pw = harness.register(ctx.authd)
    t1 = harness.login(ctx.authd, name, pw)
    t2 = harness.login(ctx.authd, name, pw)
    check(t1 != t2, "two logins returned the same token")
    check_eq(ctx.authd.post("/logout", token=t1).status, 204, "logout t1")
    check_error(verify(ctx, t1), 401, "invalid_token", "verify t1 after its logout")
    check_eq(verify(ctx, t2).status, 200, "verify t2 after t1's logout")


@test
def test_verify_and_logout_without_a_bearer_token_return_401(ctx):
    with unchanged(ctx, "no bearer"):
        for path in ("/verify", "/logout"):
            check_error(ctx.authd.post(path), 401, "invalid_token", f"{path} without Authorization")
            r = ctx.authd.post(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
            check_error(r, 401, "invalid_token", f"{path} with Basic auth")
            r = ctx.authd.post(path, headers={"Authorization": "Bearer "})
            check_error(r, 401, "invalid_token", f"{path} with an empty bearer")


@test
def test_stats_counts_users_and_sessions(ctx):
    s0 = stats(ctx)
    check_eq(set(s0), {"active_sessions", "total_users"}, "/stats keys")
    check_eq(s0["total_users"], user_count(ctx), "total_users vs auth.users")
    _, name, pw = harness.register(ctx.authd)
    s1 = stats(ctx)
    check_eq(s1["total_users"], s0["total_users"] + 1, "total_users after a register")
    check_eq(s1["active_sessions"], s0["active_sessions"], "active_sessions after a register")
    t1 = harness.login(ctx.authd, name, pw)
    t2 = harness.login(ctx.authd, name, pw)
    check_eq(stats(ctx)["active_sessions"], s0["active_sessions"] + 2, "after two logins")
    check_eq(ctx.authd.post("/logout", token=t1).status, 204, "logout")
    check_eq(stats(ctx)["active_sessions"], s0["active_sessions"] + 1, "after a logout")
    check_eq(ctx.authd.post("/logout", token=t2).status, 204, "logout")
    check_eq(stats(ctx), {"active_sessions": s0["active_sessions"],
                          "total_users": s0["total_users"] + 1}, "/stats at the end")


# --------------------------------------------------------------------------
# bad input: status, error code, and nothing changed

def expect_bad(ctx, path, body, status, code, what, headers=None):
    with unchanged(ctx, what):
        r = ctx.authd.post(path, body, headers=headers)
        check_error(r, status, code, what)


@test
def test_malformed_json_is_400_invalid_json(ctx):
    for body in ('{"username": "abc", "password": ', "not json at all", "{'username': 'x'}",
                 '{"username":"abcdef","password":"12345678"} trailing', "",
                 '{"username":"abcdef","password":"12345678",}'):
        for path in ("/register", "/login"):
            expect_bad(ctx, path, body, 400, "invalid_json", f"{path} body {body!r}",
                       headers={"Content-Type": "application/json"})


@test
def test_deeply_nested_json_is_400_too_deep(ctx):
    deep = '{"username":' + "[" * 1000 + "]" * 1000 + ',"password":"12345678"}'
    deep_obj = '{"a":' * 1000 + "1" + "}" * 1000
    for path in ("/register", "/login"):
        expect_bad(ctx, path, deep, 400, "too_deep", f"{path} with 1000 nested arrays",
                   headers={"Content-Type": "application/json"})
        expect_bad(ctx, path, deep_obj, 400, "too_deep", f"{path} with 1000 nested objects",
                   headers={"Content-Type": "application/json"})


@test
def test_json_that_is_not_an_object_is_400_not_an_object(ctx):
    for body in ('["abcdef", "12345678"]', '"abcdef"', "42", "null", "true"):
        for path in ("/register", "/login"):
            expect_bad(ctx, path, body, 400, "not_an_object", f"{path} body {body}",
                       headers={"Content-Type": "application/json"})


@test
def test_wrong_field_types_are_400_invalid_field(ctx):
    good = harness.unique_name("typ")
    cases = [
        {"username": 12345, "password": "correct horse battery"},
        {"username": good, "password": 12345678},
        {"username": ["abc"], "password": "correct horse battery"},
        {"username": {"name": "abc"}, "password": "correct horse battery"},
        {"username": True, "password": "correct horse battery"},
        {"username": good, "password": ["correct horse battery"]},
        {"username": 1.5, "password": 2.5},
    ]
    for body in cases:
        expect_bad(ctx, "/register", body, 400, "invalid_field", f"/register {body}")
        with unchanged(ctx, f"/login {body}"):
            r = ctx.authd.post("/login", body)
            check_error(r, 400, "invalid_field", f"/login {body}")


@test
def test_missing_fields_are_400_missing_field(ctx):
    name = harness.unique_name("miss")
    for body in ({}, {"username": name}, {"password": "correct horse battery"},
                 {"username": None, "password": "correct horse battery"},
                 {"user": name, "pass": "correct horse battery"}):
        for path in ("/register", "/login"):
            expect_bad(ctx, path, body, 400, "missing_field", f"{path} {body}")


@test
def test_invalid_usernames_and_passwords_are_400_invalid_field(ctx):
    cases = [
        ("x" * 1000, "correct horse battery"),
        ("x" * 65, "correct horse battery"),
        ("ab", "correct horse battery"),
        ("", "correct horse battery"),
        ("has space", "correct horse battery"),
        ("semi;colon", "correct horse battery"),
        ("\u00fcml\u00e4ut", "correct horse battery"),
        ("nul\u0000byte", "correct horse battery"),
        ("new\nline", "correct horse battery"),
        (harness.unique_name("pw"), "1234567"),
        (harness.unique_name("pw"), "p" * 257),
        (harness.unique_name("pw"), ""),
    ]
    for username, password in cases:
        expect_bad(ctx, "/register", {"username": username, "password": password}, 400,
                   "invalid_field", f"/register username {username[:20]!r} "
                   f"(len {len(username)}) password len {len(password)}")
    # The limits themselves are accepted.
    harness.register(ctx.authd, "m" + os.urandom(32).hex()[:63], "p" * 256)
    harness.register(ctx.authd, "a." + os.urandom(4).hex()[:1], "12345678")


@test
def test_nul_byte_in_username_is_rejected(ctx):
    # As an escape: valid JSON, invalid username.
    expect_bad(ctx, "/register", '{"username":"ab\\u0000cd","password":"correct horse"}', 400,
               "invalid_field", "\\u0000 in username",
               headers={"Content-Type": "application/json"})
    # As a raw byte: a control character inside a JSON string is invalid JSON.
    for path in ("/register", "/login"):
        body = b'{"username":"ab\x00cd","password":"correct horse"}'
        with unchanged(ctx, f"raw NUL {path}"):
            r = ctx.authd.raw(harness.build_request(
                "POST", path, body, {"Content-Type": "application/json"}))
            check_error(r, 400, "invalid_json", f"raw NUL byte in the username on {path}")


@test
def test_invalid_utf8_in_username_is_400_invalid_utf8(ctx):
    for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"abc\x80"):
        body = b'{"username":"u' + bad + b'x","password":"correct horse"}'
        for path in ("/register", "/login"):
            with unchanged(ctx, f"invalid UTF-8 {bad!r} {path}"):
                r = ctx.authd.raw(harness.build_request(
                    "POST", path, body, {"Content-Type": "application/json"}))
                check_error(r, 400, "invalid_utf8", f"invalid UTF-8 {bad!r} on {path}")


@test
def test_one_mib_body_is_413(ctx):
    body = json.dumps({"username": "x" * (1 << 20), "password": "correct horse"}).encode()
    for path in ("/register", "/login"):
        with unchanged(ctx, f"1 MiB body on {path}"):
            r = ctx.authd.raw(harness.build_request(
                "POST", path, body, {"Content-Type": "application/json"}), timeout=20)
            check_error(r, 413, "payload_too_large", f"1 MiB body on {path}")
    check_eq(ctx.authd.get("/health").status, 200, "health after 1 MiB bodies")


@test
def test_body_just_over_64_kib_is_413_and_under_is_not(ctx):
    over = b'{"username":"' + b"x" * (64 * 1024) + b'","password":"12345678"}'
    with unchanged(ctx, "64 KiB + 1 body"):
        r = ctx.authd.raw(harness.build_request("POST", "/register", over,
                                                {"Content-Type": "application/json"}))
        check_error(r, 413, "payload_too_large", "body of 64 KiB + 37 bytes")
    under = b'{"username":"' + b"x" * 60000 + b'","password":"12345678"}'
    with unchanged(ctx, "60 KB body"):
        r = ctx.authd.raw(harness.build_request("POST", "/register", under,
                                                {"Content-Type": "application/json"}))
        check_error(r, 400, "invalid_field", "a 60 KB body with an over-long username")


@test
def test_header_over_16_kib_is_431_headers_too_large(ctx):
    data = harness.build_request("GET", "/health", b"", {"X-Filler": "a" * (20 * 1024)})
    r = ctx.authd.raw(data)
    check_error(r, 431, "headers_too_large", "a 20 KiB header")
    check_eq(ctx.authd.get("/health").status, 200, "health after a 20 KiB header")


@test
def test_64_kib_header_is_431_and_the_server_survives(ctx):
    with unchanged(ctx, "64 KiB header"):
        data = harness.build_request("POST", "/register",
                                     json.dumps(cred(harness.unique_name("hdr"))).encode(),
                                     {"Content-Type": "application/json",
                                      "X-Filler": "a" * (64 * 1024)})
        r = ctx.authd.raw(data, timeout=15)
        check_eq(r.status, 431, f"status for a 64 KiB header ({r.body!r:.200})")
        if r.error_code is None:
            # libmicrohttpd answers itself when the header exceeds its
            # connection memory: accept any body, the server must survive.
            runner.note(f"64 KiB header: 431 with a non-JSON body from the HTTP front end "
                        f"(Content-Type {r.headers.get('content-type')!r}, "
                        f"body {r.body[:120]!r})")
        else:
            check_error(r, 431, "headers_too_large", "a 64 KiB header")
    check_eq(ctx.authd.get("/health").status, 200, "health after a 64 KiB header")
    check(ctx.authd.alive(), "authd died")


@test
def test_header_beyond_the_front_ends_memory_is_refused_and_the_server_survives(ctx):
    # Past max_header + 64 KiB libmicrohttpd answers on its own (HTML 431) or
    # drops the connection; either way nothing changes and authd lives on.
    with unchanged(ctx, "256 KiB header"):
        data = harness.build_request("POST", "/register",
                                     json.dumps(cred(harness.unique_name("big"))).encode(),
                                     {"Content-Type": "application/json",
                                      "X-Filler": "a" * (256 * 1024)})
        try:
            r = ctx.authd.raw(data, timeout=15)
            check_eq(r.status, 431, f"status for a 256 KiB header ({r.body!r:.200})")
        except AssertionError as e:
            if "closed without a response" not in str(e):
                raise
            runner.note("256 KiB header: connection closed without a response")
    check_eq(ctx.authd.get("/health").status, 200, "health after a 256 KiB header")
    check(ctx.authd.alive(), "authd died")


@test
def test_text_plain_content_type_is_415(ctx):
    for path in ("/register", "/login"):
        expect_bad(ctx, path, json.dumps(cred(harness.unique_name("ct"))), 415,
                   "unsupported_media_type", f"{path} with text/plain",
                   headers={"Content-Type": "text/plain"})


@test
def test_unknown_route_is_404_and_wrong_method_is_405(ctx):
    with unchanged(ctx, "404/405"):
        for method, path in (("GET", "/nope"), ("POST", "/register/extra"), ("GET", "/"),
                             ("GET", "/%00"), ("GET", "/.." + "/x" * 50)):
            check_error(ctx.authd.request(method, path), 404, "not_found", f"{method} {path}")
        for method, path in (("GET", "/register"), ("GET", "/login"), ("DELETE", "/logout"),
                             ("PUT", "/verify"), ("POST", "/stats"), ("POST", "/health")):
            r = ctx.authd.request(method, path, cred(harness.unique_name("m")))
            check_error(r, 405, "method_not_allowed", f"{method} {path}")
            if not r.headers.get("allow"):
                runner.note(f"405 for {method} {path} has no Allow header (RFC 9110 §15.5.6)")


# --------------------------------------------------------------------------
# forged and stale tokens

@test
def test_a_token_resigned_with_the_real_key_is_accepted(ctx):
    # The control for the forgery tests below: our crafting is right.
    signing_key(ctx)


@test
def test_alg_none_tokens_are_refused(ctx):
    header, payload, token = fresh_claims(ctx)
    for alg in ("none", "NONE", "None", "nOnE"):
        h = dict(header, alg=alg)
        check_token_refused(ctx, harness.jwt_unsigned(h, payload), f"alg {alg}")
        forged = harness.jwt_unsigned(h, payload) + token.split(".")[2]
        check_token_refused(ctx, forged, f"alg {alg} with the original signature")
    check_token_refused(ctx, harness.jwt_unsigned({"alg": "none"}, payload), "bare alg none")
    check_eq(verify(ctx, token).status, 200, "the original token after the forgeries")


@test
def test_tokens_signed_with_an_empty_or_other_key_are_refused(ctx):
    header, payload, token = fresh_claims(ctx)
    check_token_refused(ctx, harness.jwt_sign(header, payload, b""), "HS256 with an empty key")
    check_token_refused(ctx, harness.jwt_sign(header, payload, os.urandom(32)),
                        "HS256 with a random key")
    check_eq(verify(ctx, token).status, 200, "the original token after the forgeries")


@test
def test_other_algorithms_are_refused_even_with_the_real_key(ctx):
    key = signing_key(ctx)
    header, payload, _ = fresh_claims(ctx)
    for alg, digest in (("HS512", hashlib.sha512), ("HS384", hashlib.sha384)):
        h = harness.b64url(json.dumps(dict(header, alg=alg)).encode())
        p = harness.b64url(json.dumps(payload).encode())
        sig = hmac.new(key, f"{h}.{p}".encode(), digest).digest()
        check_token_refused(ctx, f"{h}.{p}.{harness.b64url(sig)}", f"{alg} with the real key")


@test
def test_tampered_tokens_are_refused(ctx):
    header, payload, token = fresh_claims(ctx)
    h, p, s = token.split(".")
    flipped = ("A" if s[0] != "A" else "B") + s[1:]
    check_token_refused(ctx, f"{h}.{p}.{flipped}", "a flipped signature character")
    check_token_refused(ctx, f"{h}.{p}.", "an empty signature")
    check_token_refused(ctx, f"{h}.{p}", "two segments")
    for change in ({"sub": str(int(payload["sub"]) + 1)}, {"username": "admin"},
                   {"exp": payload["exp"] + 86400}):
        p2 = harness.b64url(json.dumps(dict(payload, **change),
                                       separators=(",", ":")).encode())
        check_token_refused(ctx, f"{h}.{p2}.{s}", f"payload changed {change}")
    for junk in ("abc", "a.b.c", "...", "x" * 5000, token + "x", token.replace(".", "..", 1)):
        check_token_refused(ctx, junk, f"junk {junk[:30]!r}")
    check_eq(verify(ctx, token).status, 200, "the original token after the forgeries")


@test
def test_expired_not_yet_valid_and_exp_less_tokens_are_refused(ctx):
    key = signing_key(ctx)
    header, payload, token = fresh_claims(ctx)
    now = int(time.time())
    cases = {
        "exp an hour ago": dict(payload, exp=now - 3600),
        "exp two minutes ago": dict(payload, exp=now - 120),
        "no exp": {k: v for k, v in payload.items() if k != "exp"},
        "exp as a string": dict(payload, exp=str(now + 3600)),
        "nbf in ten days": dict(payload, nbf=now + 10 * 86400),
        "iat in ten days": dict(payload, iat=now + 10 * 86400),
    }
    for what, p in cases.items():
        check_token_refused(ctx, harness.jwt_sign(header, p, key), what)
    check_eq(verify(ctx, token).status, 200, "the original token after the forgeries")


@test
def test_a_validly_signed_token_for_an_unknown_session_is_refused(ctx):
    key = signing_key(ctx)
    header, payload, _ = fresh_claims(ctx)
    forged = harness.jwt_sign(header, dict(payload, sid=os.urandom(16).hex()), key)
    check_token_refused(ctx, forged, "a well-signed token with an unknown sid")


# --------------------------------------------------------------------------
# sessions in Redis, configuration, logs

def session_key(ctx, token):
    """The Redis key holding token's session (DESIGN: sess:<sid>)."""
    sid = harness.jwt_parts(token)[1]["sid"]
    cursor, keys = "0", []
    for _ in range(1000):  # bounded SCAN (never KEYS)
        cursor, batch = ctx.stack.redis("SCAN", cursor, "MATCH", f"*{sid}*", "COUNT", "1000")
        keys += batch
        if cursor == "0":
            break
    check_eq(len(keys), 1, f"Redis keys holding session {sid}")
    return keys[0]


@test
def test_sessions_expire_in_redis_with_the_token(ctx):
    token, _, _ = harness.new_session(ctx.authd)
    key = session_key(ctx, token)
    ttl = ctx.stack.redis("TTL", key)
    check(0 < ttl <= 3600, f"TTL of {key} is {ttl}, not in 1..3600")
    check_eq(ctx.authd.post("/logout", token=token).status, 204, "logout")
    check_eq(ctx.stack.redis("EXISTS", key), 0, f"{key} still exists after logout")


@test
def test_token_ttl_is_configurable(ctx):
    d = harness.new_authd(ctx, env={"VIGIL_AUTH_TOKEN_TTL_SECONDS": "120"})
    d.start()
    try:
        _, name, pw = harness.register(d)
        r = d.post("/login", cred(name, pw))
        check_eq((r.status, r.body.get("expires_in")), (200, 120), f"login {r.body!r}")
        _, payload, _ = harness.jwt_parts(r.body["token"])
        check(abs(payload["exp"] - time.time() - 120) < 10, f"exp {payload['exp']} vs now + 120")
        ttl = ctx.stack.redis("TTL", session_key(ctx, r.body["token"]))
        check(0 < ttl <= 120, f"session TTL {ttl} with a 120 s token TTL")
    finally:
        d.stop()


@test
def test_log_lines_carry_the_trace_id(ctx):
    tid = os.urandom(16).hex()
    ctx.authd.post("/verify", headers={"traceparent": f"00-{tid}-{os.urandom(8).hex()}-01"})
    harness.wait_until(lambda: f"trace_id={tid}" in ctx.authd.log_text(), 5,
                       what=f"a log line with trace_id={tid}")


@test
def test_no_secret_reaches_the_log(ctx):
    d = ctx.authd
    password = "log-canary-password-" + os.urandom(4).hex()
    _, name, _ = harness.register(d, password=password)
    token = harness.login(d, name, password)
    d.post("/login", cred(name, password + "-wrong"))
    verify(ctx, token)
    d.post("/logout", token=token)
    with open(ctx.stack.env["VIGIL_DEV_PG_PASSWORD_FILE_AUTH"], "rb") as f:
        pg_password = f.read().decode().strip()
    secrets = {"the user's password": password, "the JWT": token,
               "the JWT signature": token.split(".")[2],
               "the jwt-key": ctx.jwt_key.decode(errors="replace").strip(),
               "the postgres password": pg_password}
    time.sleep(0.2)
    log = d.log_text()
    for what, secret in secrets.items():
        check(secret and secret not in log, f"{what} appears in the log")


def session_cache_hits(d):
    r = d.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    text = r.body if isinstance(r.body, str) else r.body.decode()
    return harness.metric_value(harness.parse_metrics(text), "vigil_local_cache_lookups_total",
                                cache="sessions", result="hit")


@test
def test_a_logout_on_another_authd_revokes_its_cached_session(ctx):
    """Each authd keeps checked sessions in memory; a logout on one drops
    them in every other through Redis's invalidation push, long before
    local_cache_max_age_ms (a minute here) would."""
    other = harness.new_authd(ctx, {"VIGIL_REDIS_LOCAL_CACHE_MAX_AGE_MS": "60000"},
                              jwt_key=ctx.jwt_key)
    other.start()
    token, _, _ = harness.new_session(ctx.authd)
    hits = session_cache_hits(other)
    for i in range(3):
        check_eq(other.post("/verify", token=token).status, 200, f"verify #{i} on the other authd")
    check(session_cache_hits(other) >= hits + 2,
          "repeated verifies on the other authd were not served from its cache")

    check_eq(ctx.authd.post("/logout", token=token).status, 204, "logout on the first authd")
    t0 = time.monotonic()
    served = 0
    while True:
        r = other.post("/verify", token=token)
        if r.status != 200:
            break
        served += 1
        check(time.monotonic() - t0 < 1, "the other authd still accepts the session 1 s after "
              "its logout")
    elapsed = time.monotonic() - t0
    check_error(r, 401, "invalid_token", "verify on the other authd after the logout")
    runner.note(f"revoked on the other authd {elapsed * 1000:.1f} ms after the logout's 204, "
                f"{served} verifies accepted in between")


# --------------------------------------------------------------------------
# restarts and outages (last: they restart things)

@test
def test_sessions_survive_an_authd_restart(ctx):
    live, _, _ = harness.new_session(ctx.authd)
    revoked, _, _ = harness.new_session(ctx.authd)
    check_eq(ctx.authd.post("/logout", token=revoked).status, 204, "logout")
    before = stats(ctx)
    ctx.authd.restart()  # asserts exit status 0 on SIGTERM
    check_eq(verify(ctx, live).status, 200, "verify of a live session after the restart")
    check_error(verify(ctx, revoked), 401, "invalid_token", "revoked token after the restart")
    check_eq(stats(ctx), before, "/stats across the restart")


@test
def test_redis_outage_degrades_readiness_not_liveness(ctx):
    d = ctx.authd
    live, _, _ = harness.new_session(d)
    revoked, _, _ = harness.new_session(d)
    check_eq(d.post("/logout", token=revoked).status, 204, "logout")
    _, name, pw = harness.register(d)

    ctx.stack.kill("redis")
    try:
        check_eq(d.get("/health").status, 200, "/health with Redis down")

        def ready_is_503():
            r = d.get("/ready", timeout=10)
            return r if r.status == 503 else None
        r = harness.wait_until(ready_is_503, 15, interval=0.2, what="/ready -> 503")
        check_eq(r.body.get("status"), "unavailable", f"/ready body {r.body!r}")
        check_eq(r.body.get("failing"), "redis", f"/ready body {r.body!r}")

        for i in range(3):
            t0 = time.monotonic()
            r = verify(ctx, live, timeout=15)
            check_error(r, 503, "dependency_unavailable", f"/verify #{i} with Redis down")
            check(time.monotonic() - t0 < 10, "/verify took over 10 s with Redis down")
            r = d.post("/login", cred(name, pw), timeout=15)
            check_error(r, 503, "dependency_unavailable", f"/login #{i} with Redis down")
        r = d.post("/logout", token=live, timeout=15)
        check_error(r, 503, "dependency_unavailable", "/logout with Redis down")
        check_eq(d.get("/health").status, 200, "/health after requests with Redis down")
        check(d.alive(), "authd exited while Redis was down")
    finally:
        ctx.stack.start_one("redis")

    d.wait_ready(30)
    check(d.alive(), "authd exited")
    token, _, uname = harness.new_session(d)
    r = verify(ctx, token)
    check_eq((r.status, r.body.get("username")), (200, uname), "verify after Redis came back")
    check_error(verify(ctx, revoked), 401, "invalid_token", "a revoked token after the restart")
    still = verify(ctx, live).status
    runner.note(f"a live session after a Redis SIGKILL + start: {still} "
                f"({'Redis kept it' if still == 200 else 'Redis lost it (no persistence)'})")
    check(still in (200, 401), f"verify of the pre-outage session: {still}")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[harness.authd_binary()]))
