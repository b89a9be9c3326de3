"""Which proxy a Roboflow request goes through: the environment read as curl and requests read it."""

from __future__ import annotations

import base64

import pytest

from daemon.roboflow.transport import proxy_for

API = "https://api.roboflow.com/vision-events/batch"


def test_https_goes_through_https_proxy_lower_case_first() -> None:
    proxy = proxy_for(API, {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:8080"})
    assert proxy is not None and (proxy.host, proxy.port) == ("lower", 8080)
    assert proxy_for(API, {"HTTPS_PROXY": "upper:3128"}).host == "upper"  # type: ignore[union-attr]
    assert proxy_for(API, {"HTTP_PROXY": "http://plain:3128"}) is None  # http_proxy is for http URLs only
    assert proxy_for("http://10.0.0.5/x", {"HTTP_PROXY": "http://plain:3128"}).host == "plain"  # type: ignore[union-attr]


def test_all_proxy_is_the_fallback_and_the_port_defaults_to_1080() -> None:
    proxy = proxy_for(API, {"ALL_PROXY": "http://squid.local"})
    assert proxy is not None and (proxy.host, proxy.port, proxy.authorization) == ("squid.local", 1080, None)
    assert proxy_for(API, {}) is None


def test_credentials_become_basic_auth_and_are_never_shown() -> None:
    proxy = proxy_for(API, {"https_proxy": "http://edge%40site:p%3Ass@proxy:3128"})
    assert proxy is not None
    assert proxy.authorization == "Basic " + base64.b64encode(b"edge@site:p:ss").decode()
    assert str(proxy) == "proxy proxy:3128" and "p:ss" not in repr(str(proxy))


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("*", API, True),
        ("roboflow.com", API, True),  # a domain covers its subdomains
        (".roboflow.com", API, True),
        ("flow.com", API, False),  # a suffix that is not a whole label does not
        ("api.roboflow.com:443", API, True),
        ("api.roboflow.com:8443", API, False),
        ("10.0.0.0/8", "https://10.1.2.3/x", True),
        ("10.0.0.0/8", "https://11.1.2.3/x", False),
        ("127.0.0.1", "http://127.0.0.1:9001/x", True),
        ("localhost, 192.168.1.10 ,example.org", "https://192.168.1.10/x", True),
        ("", API, False),
    ],
)
def test_no_proxy(no_proxy: str, url: str, direct: bool) -> None:
    environ = {"HTTPS_PROXY": "http://proxy:3128", "HTTP_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(url, environ) is None) is direct


def test_a_proxy_that_is_not_http_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="environment's https_proxy must look like http://"):
        proxy_for(API, {"https_proxy": "socks5://proxy:1080"})
