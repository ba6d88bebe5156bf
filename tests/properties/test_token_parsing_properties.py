"""Whatever arrives as a token, the validators answer "not valid" and never raise.

Inputs: random text and bytes; mutants of a genuine access token (truncated, segments swapped,
padding added, standard base64 alphabet, one character changed, header re-encoded with another
alg, typ, kid or critical parameters, payload swapped for claims of odd types under the old
signature); tokens properly signed with our key whose claims have odd types (exp as a string,
float, huge or 4,400-digit integer, nested objects and arrays) or whose payload is not a JSON
object at all; JSON nested deeper than Python's decoder recurses; and refresh-token strings.

Every base token names a session that does not exist, so over HTTP nothing here may pass:
/api/v1/users/me and /oauth/userinfo answer 401 with a JSON body, /oauth/introspect answers
200 {"active": false}.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws

from oidc_server.keys import KeyRing
from oidc_server.tokens.access_tokens import ACCESS_TOKEN_TYP, AccessTokenCodec
from oidc_server.tokens.service import split_refresh_token

from ..conftest import MachineClient, bearer

ISSUER = "https://id.example"
AUDIENCE = "cinema"
#: A session id no store knows: tokens that name it are never active.
DEAD_SESSION = "no-such-session"
#: Marks a header parameter or claim to remove rather than replace.
DELETE = object()
#: Pure checks are cheap; the HTTP property makes three requests per example.
PURE = settings(max_examples=150, deadline=None, database=None)
#: The app fixture is shared by the examples of one test; rejected tokens change nothing in it.
OVER_HTTP = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def codec(signing_key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> AccessTokenCodec:
    folder = tmp_path_factory.mktemp("parsing-keys")
    (folder / signing_key_file.name).write_bytes(signing_key_file.read_bytes())
    return AccessTokenCodec(KeyRing(folder, max_token_lifetime=900), ISSUER, AUDIENCE, ttl=900)


def genuine(codec: AccessTokenCodec) -> tuple[str, dict[str, Any]]:
    """A token exactly as we issue them, for a session that does not exist."""
    return codec.issue(
        subject=str(uuid.uuid4()),
        client_id="cinema-app",
        scope="openid profile email",
        session_id=DEAD_SESSION,
        roles=["subscriber"],
    )


def sign_raw(codec: AccessTokenCodec, payload: bytes, **header: Any) -> str:
    """A JWS over any payload bytes, signed with our current key (what only we could make)."""
    key = codec.keyring.current
    protected = {"alg": "RS256", "typ": ACCESS_TOKEN_TYP, "kid": key.kid, **header}
    return jws.serialize_compact(protected, payload, key.key, algorithms=["RS256"])


# Strategies -----------------------------------------------------------------------------

#: Numbers JSON can carry that no NumericDate should be: floats, NaN, out-of-range integers.
ODD_NUMBERS = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from([2**63, 2**64 + 1, -(2**63), 10**40, -(10**40)]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | ODD_NUMBERS | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
#: What may stand where a claim or header parameter is expected.
ODD_VALUES = st.one_of(
    JSON_VALUES,
    st.integers(min_value=0, max_value=2**40).map(str),  # exp as a string
    st.just(DELETE),
)
ALGORITHMS = st.sampled_from(
    ["none", "None", "NONE", "HS256", "HS512", "RS512", "PS256", "ES256", "EdDSA", "rs256", ""]
)
#: Any code point, lone surrogates too: a Python str can hold them (JSON "\ud800" decodes so).
ANY_CHARACTER = st.characters() | st.characters(categories=["Cs"])


def any_text(max_size: int) -> st.SearchStrategy[str]:
    """Text of any code points (``st.text`` itself never yields surrogates)."""
    return st.lists(ANY_CHARACTER, max_size=max_size).map("".join)


CLAIMS = ("iss", "sub", "aud", "client_id", "exp", "iat", "jti", "scope", "sid", "roles")


def changed(original: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = {**original, **changes}
    return {k: v for k, v in merged.items() if v is not DELETE}


def header_changes(kid: str) -> st.SearchStrategy[dict[str, Any]]:
    """Another alg, typ or kid, critical extensions (b64: false changes the signing input)."""
    return st.fixed_dictionaries(
        {},
        optional={
            "alg": ALGORITHMS | ODD_VALUES,
            "typ": st.sampled_from(["JWT", "at+JWT", "application/at+jwt", "jwt"]) | ODD_VALUES,
            "kid": st.sampled_from([kid + "x", kid.upper(), "", "../" + kid]) | ODD_VALUES,
            "crit": st.sampled_from([["b64"], ["exp"], []]) | ODD_VALUES,
            "b64": st.booleans() | ODD_VALUES,
            "jku": st.just("https://evil.example/jwks.json"),
            "jwk": JSON_VALUES,
        },
    ).filter(bool)


def claim_changes() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(CLAIMS), ODD_VALUES, min_size=1, max_size=4)


def deep_json(opening: str, closing: str) -> st.SearchStrategy[bytes]:
    """JSON nested deeper than Python's decoder recurses, yet short enough to be a token."""
    return st.integers(900, 2500).map(lambda n: (opening * n + "0" + closing * n).encode())


DEEP_JSON = deep_json("[", "]") | deep_json('{"a":', "}")


def with_huge_exp(claims: dict[str, Any]) -> bytes:
    """The claims with an exp of 4,400 digits: past Python's limit on parsing integers."""
    text = json.dumps({**claims, "exp": 0})
    return text.replace('"exp": 0', '"exp": 1' + "0" * 4400).encode()


@st.composite
def mutants(draw: st.DrawFn, token: str) -> str:
    """A genuine token, damaged or re-encoded in one of the ways attackers and proxies do."""
    head, body, sig = token.split(".")
    parts = [head, body, sig]
    header = json.loads(unb64(head))
    claims = json.loads(unb64(body))
    how = draw(
        st.sampled_from(
            [
                "truncated",
                "segments swapped",
                "padding added",
                "standard alphabet",
                "one character changed",
                "header changed",
                "claims changed",
                "huge exp",
                "segments added or dropped",
                "whitespace",
            ]
        )
    )
    if how == "truncated":
        return token[: draw(st.integers(0, len(token) - 1))]
    if how == "segments swapped":
        return ".".join(draw(st.permutations(parts).filter(lambda p: p != parts)))
    if how == "padding added":
        i = draw(st.integers(0, 2))
        padded = list(parts)
        padded[i] += "=" * draw(st.integers(1, 3))
        return ".".join(padded)
    if how == "standard alphabet":
        return token.replace("-", "+").replace("_", "/")
    if how == "one character changed":
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + draw(st.characters(codec="ascii")) + token[i + 1 :]
    if how == "header changed":
        return ".".join([segment(changed(header, draw(header_changes(header["kid"])))), body, sig])
    if how == "claims changed":
        return ".".join([head, segment(changed(claims, draw(claim_changes()))), sig])
    if how == "huge exp":
        return ".".join([head, b64(with_huge_exp(claims)), sig])
    if how == "segments added or dropped":
        return draw(st.sampled_from([f"{token}.{sig}", f"{head}.{body}", f"{token}.", f".{token}"]))
    return draw(st.sampled_from([f" {token}", f"{token} ", f"{head}. {body}.{sig}"]))


@st.composite
def signed_oddities(draw: st.DrawFn, codec: AccessTokenCodec) -> str:
    """Tokens signed with our own key whose claims, or whole payload, are not what we issue."""
    _, claims = genuine(codec)
    # Without its sid such a token would be a well-formed client token, which we did sign:
    # the sid stays, of an odd type or naming a session that does not exist.
    user_claims = claim_changes().map(
        lambda c: c if c.get("sid") is not DELETE else {**c, "sid": DEAD_SESSION}
    )
    payload = draw(
        st.one_of(
            user_claims.map(lambda c: json.dumps(changed(claims, c)).encode()),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),  # arrays, strings, numbers, null
            st.just(with_huge_exp(claims)),
            st.binary(max_size=64),  # not JSON, maybe not UTF-8
        )
    )
    return sign_raw(codec, payload)


def random_tokens() -> st.SearchStrategy[str]:
    """Text and bytes of no particular shape, some of it JWT-like (three base64url segments)."""
    return st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
        st.lists(st.binary(max_size=200).map(b64), min_size=3, max_size=3).map(".".join),
        st.lists(JSON_VALUES.map(segment), min_size=2, max_size=3).map(".".join),
        st.text(alphabet="abc.=-_+/", max_size=40),
    )


@st.composite
def deeply_nested(draw: st.DrawFn, codec: AccessTokenCodec) -> str:
    """A header anyone can send, or a payload only we can sign, nested past the recursion limit."""
    nested = draw(DEEP_JSON)
    if draw(st.booleans()):
        return f"{b64(nested)}.e30.{b64(b'signature')}"
    return sign_raw(codec, nested)


def any_token(codec: AccessTokenCodec) -> st.SearchStrategy[str]:
    return st.one_of(
        random_tokens(),
        st.builds(lambda: genuine(codec)[0]).flatmap(mutants),
        signed_oddities(codec),
        deeply_nested(codec),
    )


def well_typed(claims: dict[str, Any], codec: AccessTokenCodec) -> bool:
    """What an accepted token's claims must be (RFC 9068 §2.2), checked independently."""

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    return (
        claims.get("iss") == codec.issuer
        and claims.get("aud") == codec.audience
        and integer(claims.get("exp"))
        and integer(claims.get("iat"))
        and all(isinstance(claims.get(k), str) for k in ("sub", "client_id", "jti", "scope"))
        and isinstance(claims.get("sid", ""), str)
    )


# The codec, the service and refresh-token parsing ------------------------------------------


@PURE
@given(data=st.data())
def test_the_codec_answers_none_or_well_typed_claims_and_never_raises(
    codec: AccessTokenCodec, data: st.DataObject
) -> None:
    token = data.draw(any_token(codec) | any_text(300), label="token")
    claims = codec.verify(token)
    assert claims is None or well_typed(claims, codec), claims


@PURE
@given(data=st.data())
def test_a_damaged_genuine_token_verifies_to_nothing_or_to_its_own_claims(
    codec: AccessTokenCodec, data: st.DataObject
) -> None:
    # Re-encodings that decode to the same bytes (spare bits of the last base64 character,
    # padding) may still verify; what they can never do is yield different claims.
    token, claims = genuine(codec)
    mutant = data.draw(mutants(token), label="mutant")
    assert codec.verify(mutant) in (None, claims)


@PURE
@given(data=st.data())
def test_a_signed_token_with_one_ill_typed_claim_is_refused(
    codec: AccessTokenCodec, data: st.DataObject
) -> None:
    _, claims = genuine(codec)
    name = data.draw(st.sampled_from(["exp", "iat", "sub", "client_id", "jti", "scope", "sid"]))
    wrong = data.draw(
        JSON_VALUES.filter(lambda v: not isinstance(v, str))
        if name not in ("exp", "iat")
        else JSON_VALUES.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
        | st.integers(0, 2**40).map(str),
        label="value",
    )
    token = sign_raw(codec, json.dumps({**claims, name: wrong}).encode())
    assert codec.verify(token) is None


@PURE
@given(
    text=st.one_of(
        any_text(300),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
        st.tuples(any_text(40), any_text(40)).map(".".join),
        st.text(alphabet=".", max_size=5),
    )
)
def test_refresh_token_strings_split_into_a_session_and_a_digest_or_nothing(text: str) -> None:
    parts = split_refresh_token(text)
    if parts is not None:
        sid, digest = parts
        assert sid == text.partition(".")[0] and sid
        assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


def test_the_refresh_token_splitter_refuses_what_is_not_text() -> None:
    for value in (None, b"sid.secret", 42, ["sid", "secret"]):
        assert split_refresh_token(value) is None  # type: ignore[arg-type]


@OVER_HTTP
@given(data=st.data())
def test_the_token_service_finds_no_access_or_refresh_token_in_garbage(
    services: Any, data: st.DataObject
) -> None:
    token = data.draw(
        any_token(services.tokens.codec) | any_text(300),
        label="token",
    )
    assert services.tokens.verify_access_token(token) is None
    assert services.tokens.peek_refresh_token(token) is None


# Over HTTP: the resource protector and introspection ---------------------------------------

#: What a header value can carry through WSGI: Latin-1, no control characters.
HEADER_TEXT = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def header_safe(token: str) -> bool:
    return all(0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in token)


@OVER_HTTP
@given(data=st.data())
def test_non_genuine_bearer_tokens_get_401_json_and_introspect_as_inactive(
    client: FlaskClient, services: Any, machine: MachineClient, data: st.DataObject
) -> None:
    codec = services.tokens.codec
    token = data.draw(
        st.one_of(
            any_token(codec).filter(header_safe),
            st.text(HEADER_TEXT, max_size=200),
        ),
        label="token",
    )
    for path in ("/api/v1/users/me", "/oauth/userinfo"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401, (path, response.get_data(as_text=True))
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert response.is_json and isinstance(response.json["error"], str), path

    if not token:
        return  # no token parameter at all is a malformed request (400), tested elsewhere
    introspected = client.post("/oauth/introspect", data={"token": token}, headers=machine.basic)
    assert introspected.status_code == 200, introspected.get_data(as_text=True)
    assert introspected.json == {"active": False}


@OVER_HTTP
@given(
    header=st.one_of(
        st.text(HEADER_TEXT, max_size=100),
        st.sampled_from(["Bearer", "Basic ", "bearer", "Bearer  ", "Token abc"]),
        st.text(HEADER_TEXT, max_size=60).map(lambda t: f"bearer {t}"),
    )
)
def test_any_authorization_header_that_is_not_our_token_gets_401_json(
    client: FlaskClient, header: str
) -> None:
    response = client.get("/api/v1/users/me", headers={"Authorization": header})
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.is_json and set(response.json) >= {"error", "message"}
