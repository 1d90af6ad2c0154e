import pytest

from addons import redact

TOKEN = "ya29.a0AfH6SMBx-secret_token.value"


@pytest.mark.parametrize(
    "url, secret",
    [
        ("/storage/v1/b?access_token=abc123", "abc123"),
        ("/b/o?key=AIzaSecretKey&alt=media", "AIzaSecretKey"),
        ("/b/o?X-Goog-Signature=deadbeef&X-Goog-Credential=sa%40p.iam%2F20240101", "deadbeef"),
        ("/b/o?X-Goog-Signature=deadbeef&X-Goog-Credential=sa%40p.iam%2F20240101", "sa%40p.iam"),
        ("/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=ADPycdsecret", "ADPycdsecret"),
        ("/x?ACCESS_TOKEN=abc123", "abc123"),
        ("/x?a=1&access_token=abc123#frag", "abc123"),
        ("/x#access_token=abc123", "abc123"),
        ("https://user:pw@storage.googleapis.com/x?signature=s3cr3t", "pw"),
        ("https://user:pw@storage.googleapis.com/x?signature=s3cr3t", "s3cr3t"),
        (f"/x?note={TOKEN}", TOKEN),
        ("/x?%61ccess_token=abc123", "abc123"),
    ],
)
def test_secret_query_values_never_survive(url, secret):
    out = redact.redact_url(url)
    assert secret not in out
    assert redact.MARKER in out


def test_harmless_query_is_kept():
    assert redact.redact_url("/storage/v1/b/bk/o?prefix=a%2Fb&maxResults=10") == "/storage/v1/b/bk/o?prefix=a%2Fb&maxResults=10"


def test_headers_are_redacted_case_insensitively():
    out = redact.redact_headers(
        [("Authorization", f"Bearer {TOKEN}"), ("Proxy-Authorization", "Basic dTpw"), ("Cookie", "sid=1"),
         ("X-Other", f"Bearer {TOKEN}"), ("Accept", "*/*")]
    )
    assert TOKEN not in str(out)
    assert out["authorization"] == out["cookie"] == out["proxy-authorization"] == redact.MARKER
    assert out["accept"] == "*/*"


def test_fingerprint_is_short_stable_and_not_the_token():
    fp = redact.fingerprint(TOKEN)
    assert fp == redact.fingerprint(TOKEN) and fp != redact.fingerprint(TOKEN + "x")
    assert TOKEN not in fp and len(fp) < 24


def test_redact_text_removes_given_secrets_and_bearer_values():
    text = f"failed with Bearer abc.def and {TOKEN} and opaque-secret"
    out = redact.redact_text(text, ["opaque-secret"])
    assert "abc.def" not in out and TOKEN not in out and "opaque-secret" not in out
