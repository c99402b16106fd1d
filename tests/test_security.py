"""The web layer's trust rules: one redirect validator (server and page JS), cross-site refusal.

The JS half of the redirect rule runs in real Chromium in tests/test_security_browser.py over
the same REDIRECTS vectors.
"""
from __future__ import annotations

import pytest

from central.web.security import safe_redirect
from tests.apiclient import PASSWORD, api  # noqa: F401

EVIL = "/"  # every unsafe target falls back to the overview

# (target as the browser would hand it to us, already percent-decoded; where it may lead)
REDIRECTS = [
    ("/", "/"),
    ("/servers/web1", "/servers/web1"),
    ("/alerts?state=firing&x=1#top", "/alerts?state=firing&x=1#top"),
    ("/servers/a%2Fb", "/servers/a%2Fb"),
    ("/%09/evil.example", "/%09/evil.example"),  # still encoded: a browser keeps it as a path
    ("/javascript:alert(1)", "/javascript:alert(1)"),
    ("//evil.example/x", EVIL),
    ("///evil.example", EVIL),
    ("https://evil.example", EVIL),
    ("http:/evil.example", EVIL),
    ("javascript:alert(1)", EVIL),
    ("evil.example", EVIL),
    ("/\\evil.example", EVIL),
    ("\\\\evil.example", EVIL),
    ("/x\\..\\\\evil.example", EVIL),
    ("/\t/evil.example", EVIL),
    ("/\n/evil.example", EVIL),
    ("/\r\n/evil.example", EVIL),
    ("\t//evil.example", EVIL),
    (" //evil.example", EVIL),
    ("/\x00/evil.example", EVIL),
    ("/\x7f", EVIL),
    ("", EVIL),
    ("/" + "a" * 499, "/" + "a" * 499),
    ("/" + "a" * 500, EVIL),
]


@pytest.mark.parametrize("target,expected", REDIRECTS)
def test_safe_redirect(target, expected):
    assert safe_redirect(target) == expected


def test_safe_redirect_of_no_text():
    assert safe_redirect(None) == "/" and safe_redirect(["/x"]) == "/" and safe_redirect(b"/x") == "/"


async def _login(api, user="operator1", **kw):
    return await api.request("POST", "/api/v1/login", role=None, json={"username": user, "password": PASSWORD}, **kw)


async def test_the_login_page_never_carries_a_foreign_next(api):
    """GET /login?next=/%5Cevil.example: the form's hidden next (which the page's JS follows) is '/'."""
    for query, expected in (("/%5Cevil.example", "/"), ("/%09/evil.example", "/"), ("//evil.example", "/"),
                            ("/servers/web1", "/servers/web1")):
        status, html, _ = await api.get("/login?next=" + query, role=None)
        assert status == 200
        assert f'<input type="hidden" name="next" value="{expected}">' in html, query


@pytest.mark.parametrize("target,expected", REDIRECTS)
async def test_a_logged_in_user_is_sent_on_only_within_the_site(api, target, expected):
    """/login?next=... when logged in is a 302; next=/%09/evil.example once led to //evil.example."""
    await _login(api)
    async with api.client.get("/login", params={"next": target}, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == expected


@pytest.mark.parametrize("target,expected", [r for r in REDIRECTS if len(r[0]) <= 500])  # the body schema's cap
async def test_the_form_login_redirects_within_the_site(api, target, expected):
    """A form post with a tab (or any other trick) in next is answered 303 to a local path."""
    async with api.client.post("/api/v1/login", allow_redirects=False,
                               data={"username": "viewer1", "password": PASSWORD, "next": target}) as resp:
        assert resp.status == 303 and resp.headers["Location"] == expected
        assert "central_session=" in resp.headers["Set-Cookie"]


@pytest.mark.parametrize("headers", [
    {"Origin": "null"}, {"Origin": "NULL"}, {"Origin": "https://evil.example"}, {"Origin": "evil.example"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
])
async def test_cross_site_login_is_refused(api, headers):
    """A login CSRF from a sandboxed iframe (Origin: null) or a sibling site sets no cookie."""
    status, body, resp = await _login(api, headers=headers)
    assert status == 403 and body["error"] == "csrf_failed"
    assert "Set-Cookie" not in resp.headers


async def test_same_origin_login_is_accepted(api):
    host = api.client.make_url("").host + ":" + str(api.client.make_url("").port)
    status, body, _ = await _login(api, headers={"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body["user"] == "operator1"


@pytest.mark.parametrize("origin", ["null", "https://evil.example"])
async def test_every_state_change_refuses_a_cross_site_origin(api, origin):
    """With a valid session cookie and its CSRF token, a cross-site request still changes nothing."""
    _, body, _ = await _login(api, user="admin1")
    csrf = {"X-CSRF-Token": body["csrf_token"], "Origin": origin}
    for method, path, payload in (("PATCH", "/api/v1/servers/local", {"tags": ["pwned"]}),
                                  ("DELETE", "/api/v1/servers/local", None),
                                  ("POST", "/api/v1/logout", None)):
        status, resp, _ = await api.request(method, path, role=None, headers=csrf, json=payload)
        assert status == 403 and resp["error"] == "csrf_failed", (method, path)
        # bearer callers that carry a browser's Origin are refused the same way
        status, resp, _ = await api.request(method, path, role="admin", headers={"Origin": origin}, json=payload)
        assert status == 403, (method, path)
    assert (await api.central.storage.get_server("local")).tags == ("central",)
    status, body, _ = await api.get("/api/v1/session", role=None)
    assert status == 200 and body["user"] == "admin1"  # the logout was refused too
