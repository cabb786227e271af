"""App-password hashes: fixed vectors from independent implementations, round trips, formats.

How the vectors were made (once, pasted here as literals):
- SHA-crypt: Debian 12's libxcrypt through the system interpreter,
  `/usr/bin/python3 -W ignore -c 'import crypt; print(crypt.crypt(PASSWORD, SALT))'`.
  Salts with `+`, `=`, `{` are what PHP's crypt() accepts and writes; libxcrypt
  accepts them the same way (passlib/libpass reject them).
- DREPPER_*: the published test vectors of Ulrich Drepper's "Unix crypt using SHA-256
  and SHA-512" specification.
- bcrypt `$2y$`/`$2b$`: the same libxcrypt call (libxcrypt implements PHP's `$2y$`);
  `$2a$05$CCC...` for "U*U" is the well-known OpenBSD/OpenWall test vector.
- argon2id: argon2-cffi 25.1 `argon2.low_level.hash_secret(b"app-pass-1234",
  b"saltsaltsaltsalt", time_cost=2, memory_cost=1024, parallelism=1, hash_len=32,
  type=Type.ID)` (no independent argon2 binary was available).
"""

from __future__ import annotations

import re

import pytest

from dovecot_appauth import hashing
from dovecot_appauth.hashing import (
    UnsupportedHash,
    dummy_verify,
    generate_password,
    hash_password,
    scheme_of,
    verify,
)
from tests.support.common import wrong_password

PW = "app-pass-1234"

# (password, stored value) that must verify
GOOD_VECTORS = [
    # glibc/libxcrypt crypt(), $6$ with a normal 16-character salt
    pytest.param(PW, "$6$saltsalt12345678$a2/CTv42f5VN62PoLuodI/UpTa4Po0382KZKtB3EPUNrBATi9WED5/QJFt8nWNcHKd5IqeGfq"
                 "zHeyXQ0Nokoa1", id="sha512-plain-salt"),
    pytest.param(PW, "{CRYPT}$6$saltsalt12345678$a2/CTv42f5VN62PoLuodI/UpTa4Po0382KZKtB3EPUNrBATi9WED5/QJFt8nWNcHKd"
                 "5IqeGfqzHeyXQ0Nokoa1", id="sha512-plain-salt-CRYPT-prefix"),
    pytest.param(PW, "{SHA512-CRYPT}$6$saltsalt12345678$a2/CTv42f5VN62PoLuodI/UpTa4Po0382KZKtB3EPUNrBATi9WED5/QJFt8"
                 "nWNcHKd5IqeGfqzHeyXQ0Nokoa1", id="sha512-SHA512-CRYPT-prefix"),
    # legacy salts as PHP writes them: + = {
    pytest.param(PW, "{CRYPT}$6$ab+cd=ef{gh$NyhYA6m/YGmU9ryMmEDgjZLuKCp.4/xC9Inx9PtQQs.jHsOcLwbSXv6qlwNHd7UdRDvZ/0MS"
                 "R/Fd..PUaF5Nz0", id="sha512-salt-plus-equals-brace"),
    pytest.param(PW, "$6$ab+cd=ef{gh$NyhYA6m/YGmU9ryMmEDgjZLuKCp.4/xC9Inx9PtQQs.jHsOcLwbSXv6qlwNHd7UdRDvZ/0MSR/Fd..P"
                 "UaF5Nz0", id="sha512-legacy-salt-no-prefix"),
    pytest.param(PW, "{CRYPT}$6$Xy+/=Z{a.b$8H9hyraZMcYqGByOb4cIWxGmvNAPv3xZPz0octduNpM.yQmhXopWq/nLzDqw2NEBOlhVBX/iV"
                 "UKq3v1TPMZEw0", id="sha512-legacy-salt-mixed"),
    # rounds=
    pytest.param(PW, "{CRYPT}$6$rounds=10000$saltstring$Uz7nP7.mrbaCeixnsKsJoXaaa56Hc1rMc/LHNHKzf3AiCKCkYHXmktKb1WM5l/"
                 "1dkxQa9MbN4PZz33Lw4dInr.", id="sha512-rounds-10000"),
    pytest.param(PW, "$6$rounds=10000$saltstring$Uz7nP7.mrbaCeixnsKsJoXaaa56Hc1rMc/LHNHKzf3AiCKCkYHXmktKb1WM5l/1dkxQa"
                 "9MbN4PZz33Lw4dInr.", id="sha512-rounds-10000-no-prefix"),
    # non-ASCII password (UTF-8 bytes, as PHP hashes them)
    pytest.param("pässwörd-ü", "{CRYPT}$6$utf8salt$o0oVbCzGq22TEucHExMyefg9SJH1rEAoW75i9twXvu0ayuD2C2cEnh41jZc3lKtmy"
                 "Bvs189zjjq5UX957EOOb1", id="sha512-utf8-password"),
    # Drepper's published vectors
    pytest.param("Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdc"
                 "bYEdFCoEOfaS35inz1", id="DREPPER-sha512"),
    pytest.param("Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/Ur"
                 "jmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.", id="DREPPER-sha512-rounds-10000"),
    pytest.param("This is just a test", "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glM"
                 "hwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0", id="DREPPER-sha512-explicit-rounds-5000"),
    pytest.param("Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", id="DREPPER-sha256"),
    # bcrypt
    pytest.param("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", id="bcrypt-2a-U*U"),
    pytest.param(PW, "$2y$05$abcdefghijklmnopqrstuulHaQ4lFTJzQbV4OYABOVopDd0VYQQGO", id="bcrypt-2y"),
    pytest.param(PW, "{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuulHaQ4lFTJzQbV4OYABOVopDd0VYQQGO", id="bcrypt-BLF-CRYPT"),
    pytest.param("Kx7q-Pm2Z-aB9c-0dEf", "{CRYPT}$2y$10$./0123456789ABCDEFGHI.399EwWbn767L7Lf4mZ5X5RS10dcWQpe",
                 id="bcrypt-2y-cost10-CRYPT-prefix"),
    pytest.param(PW, "$2b$04$XXXXXXXXXXXXXXXXXXXXXOBTCw1sXQwKAx8aUFNo5MRAeJtrqSdaW", id="bcrypt-2b"),
    # argon2id
    pytest.param(PW, "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$9A0iN+Cq/Yg5ZpnlSKEbag47PuD9B3lY4AsxeEtWfqk",
                 id="argon2id"),
    pytest.param(PW, "{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$9A0iN+Cq/Yg5ZpnlSKEbag47PuD9B3lY4A"
                 "sxeEtWfqk", id="argon2id-prefix"),
]


@pytest.mark.parametrize(("password", "stored"), GOOD_VECTORS)
def test_verify_vector(password, stored):
    assert verify(password, stored) is True


@pytest.mark.parametrize(("password", "stored"), GOOD_VECTORS)
def test_verify_wrong_password(password, stored):
    assert verify(password + "x", stored) is False
    assert verify(wrong_password(password), stored) is False  # only the last character differs
    assert verify("", stored) is False
    assert verify(password.upper() if password != password.upper() else password.lower(), stored) is False


@pytest.mark.parametrize(("password", "stored"), GOOD_VECTORS)
def test_verify_tampered_hash(password, stored):
    # the last character changed: the comparison must look at the whole value
    last = stored[-1]
    tampered = stored[:-1] + ("A" if last != "A" else "B")
    assert verify(password, tampered) is False


def test_verify_prefix_case_insensitive():
    stored = ("{crypt}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOf"
              "aS35inz1")
    assert verify("Hello world!", stored) is True


def test_verify_bcrypt_uses_first_72_bytes_like_php():
    # libxcrypt (and PHP) hash only the first 72 bytes: this vector is crypt("a" * 72, ...)
    stored = "$2y$04$abcdefghijklmnopqrstuuBzzIgyKkz7xMWYSzkIjUSnxEQFQ0WNe"
    assert verify("a" * 72, stored) is True
    assert verify("a" * 80, stored) is True  # bcrypt 5 would raise on > 72 bytes; we must not
    assert verify("a" * 71, stored) is False


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "{PLAIN}secret",
        "$1$saltsalt$abcdefghijklmnopqrstuv",  # md5-crypt
        "{SSHA}abcdefgh",
        "$argon2i$v=19$m=1024,t=2,p=1$c2FsdHNhbHQ$abc",
        "$2x$05$abcdefghijklmnopqrstuu",
    ],
)
def test_verify_unknown_format_raises_UnsupportedHash(stored):
    with pytest.raises(UnsupportedHash) as info:
        verify("secret", stored)
    assert "secret" not in str(info.value)
    if stored:
        assert stored not in str(info.value)


@pytest.mark.parametrize("stored", ["$6$rounds=abc$salt$x", "{CRYPT}$6$sa:lt$x", "$6$rounds=10$salt$x"])
def test_verify_sha_crypt_rejected_by_libcrypt_raises(stored):
    with pytest.raises(UnsupportedHash, match="libcrypt rejected"):
        verify("secret", stored)


def test_verify_malformed_argon2_raises():
    with pytest.raises(UnsupportedHash, match="malformed"):
        verify("secret", "$argon2id$v=19$m=oops")


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("{CRYPT}$6$x$y", "sha512-crypt"),
        ("$6$rounds=10000$x$y", "sha512-crypt"),
        ("{SHA256-CRYPT}$5$x$y", "sha256-crypt"),
        ("{BLF-CRYPT}$2y$10$x", "bcrypt"),
        ("$2b$10$x", "bcrypt"),
        ("$2a$10$x", "bcrypt"),
        ("{ARGON2ID}$argon2id$v=19$x", "argon2id"),
    ],
)
def test_scheme_of(stored, scheme):
    assert scheme_of(stored) == scheme


# --- new passwords and hashes ----------------------------------------------------------

PASSWORD_RE = re.compile(r"^[0-9A-Za-z]{4}(-[0-9A-Za-z]{4}){3}$")


def test_generate_password_format():
    passwords = {generate_password() for _ in range(200)}
    assert all(PASSWORD_RE.match(p) for p in passwords), passwords
    assert len(passwords) == 200  # random, not repeating
    # the whole alphabet is used (200 * 16 draws from 62 characters)
    assert set("".join(passwords).replace("-", "")) == set(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    )


def test_generate_password_length_and_chunk():
    assert re.fullmatch(r"[0-9A-Za-z]{5}-[0-9A-Za-z]{5}-[0-9A-Za-z]{5}-[0-9A-Za-z]{5}", generate_password(20, 5))
    assert re.fullmatch(r"[0-9A-Za-z]{24}", generate_password(24, 0))


@pytest.mark.parametrize(
    ("scheme", "pattern"),
    [
        ("sha512-crypt", r"\{CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}"),
        ("bcrypt", r"\{BLF-CRYPT\}\$2y\$10\$[./0-9A-Za-z]{53}"),
        ("argon2id", r"\{ARGON2ID\}\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"),
    ],
)
def test_hash_password_round_trip(scheme, pattern):
    password = generate_password()
    stored = hash_password(password, scheme)
    assert re.fullmatch(pattern, stored), stored
    assert scheme_of(stored) == scheme
    assert verify(password, stored) is True
    assert verify(password[:-1], stored) is False
    assert hash_password(password, scheme) != stored  # a fresh salt each time


def test_hash_password_sha512_default_rounds_not_written():
    stored = hash_password("pw")
    assert stored.startswith("{CRYPT}$6$")
    assert "rounds=" not in stored


def test_hash_password_sha512_custom_rounds_written():
    stored = hash_password("pw", rounds=6000)
    assert stored.startswith("{CRYPT}$6$rounds=6000$")
    assert verify("pw", stored) is True


def test_hash_password_sha512_matches_libcrypt():
    # the stored value is exactly what libcrypt's crypt() gives for its own setting (PHP-compatible)
    try:
        from _crypt import crypt  # the C module itself: `crypt` warns of its removal in 3.13
    except ImportError:
        from legacycrypt import crypt  # Python 3.13+

    stored = hash_password("Hello world!")
    value = stored[len("{CRYPT}"):]
    assert crypt("Hello world!", value) == value


def test_hash_password_unknown_scheme():
    with pytest.raises(ValueError, match="unknown hash scheme"):
        hash_password("pw", "md5-crypt")


@pytest.mark.parametrize("scheme", ["sha512-crypt", "bcrypt", "argon2id"])
def test_dummy_hashes_are_valid_for_their_scheme(scheme):
    stored = hashing._DUMMY_HASHES[scheme]
    assert scheme_of(stored) == scheme
    assert verify("not the throw-away password", stored) is False


@pytest.mark.parametrize("scheme", ["sha512-crypt", "bcrypt", "argon2id", "no-such-scheme"])
def test_dummy_verify_does_one_check_of_the_scheme(scheme, monkeypatch):
    seen = []
    real = hashing.verify

    def counting(password, stored):
        seen.append(scheme_of(stored))
        return real(password, stored)

    monkeypatch.setattr(hashing, "verify", counting)
    assert dummy_verify("whatever", scheme) is None
    assert seen == [scheme if scheme != "no-such-scheme" else "sha512-crypt"]


@pytest.mark.parametrize(
    "stored",
    ["$argon2id$garbage", "{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=1$c2FsdA$"],
)
def test_verify_malformed_argon2_variants_raise(stored):
    with pytest.raises(UnsupportedHash, match="malformed"):
        verify("secret", stored)


def test_dummy_verify_follows_configured_rounds(monkeypatch):
    """With sha512_rounds raised, the unknown-user check must cost the raised rounds too."""
    seen = []
    real_verify = hashing.verify
    monkeypatch.setattr(hashing, "verify", lambda pw, stored: seen.append(stored) or real_verify(pw, stored))
    hashing.dummy_verify("x", "sha512-crypt", rounds=20000)
    hashing.dummy_verify("x", "sha512-crypt")
    assert seen[0].startswith("{CRYPT}$6$rounds=20000$")
    assert "rounds=" not in seen[1]


@pytest.mark.parametrize("stored", [
    "{CRYPT}$6$saltsalt\x0012345678$a2/CTv42f5VN62PoLuodI", "$6$saltsalt12345678$a2/CTv42f5VN62PoLuodI\x00",
    "$5$salt$hash\x00", "{BLF-CRYPT}$2y$10$\x00" + "a" * 52, "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$\x00$x",
])
def test_a_stored_value_with_a_nul_byte_is_unsupported_not_a_crash(stored):
    """libcrypt raises ValueError("embedded null character"): that row is unverifiable
    (login.py names it and tries the others), never an internal error of every login."""
    with pytest.raises(UnsupportedHash, match="contains a NUL byte") as info:
        verify(PW, stored)
    assert stored not in str(info.value)


@pytest.mark.parametrize("scheme", ["sha512-crypt", "bcrypt", "argon2id"])
@pytest.mark.parametrize("password", [PW + "\0", "\0" + PW, "a\0b", "\0", PW + "\ud800", "\udcff"])
def test_a_password_with_a_nul_or_a_surrogate_matches_nothing_after_the_same_work(scheme, password, monkeypatch):
    """Decided: such a password is a wrong password for every scheme (not a temporary
    failure, not the stored row's fault). fd 3 cannot carry either, serve's /verify JSON can;
    not the hash of what a C string would see (up to the NUL), nor an argon2id hash of the
    same string (argon2 would take it)."""
    clean = password.replace("\ud800", "").replace("\udcff", "")
    stored = hash_password(clean if scheme == "argon2id" else clean.split("\0")[0], scheme)
    seen = []
    real = hashing._verify
    monkeypatch.setattr(hashing, "_verify", lambda *args: seen.append(args[0]) or real(*args))
    assert verify(password, stored) is False
    assert seen == [scheme]  # one hash computed, as for any other wrong password
    assert verify(PW, hash_password(PW, scheme)) is True  # the check still works


def test_a_password_with_a_nul_costs_the_dummy_work_too():
    dummy_verify("a\0b", "sha512-crypt", count=2)
    dummy_verify("\udcff", "bcrypt")
