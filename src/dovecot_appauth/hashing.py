"""App-password hashes: verify what is stored, make new ones, and generate passwords.

Stored values look like the Roundcube plugin writes them: `{CRYPT}$6$salt$hash` from
PHP's crypt(). PHP accepts any salt byte except `$`, and real databases hold salts
with `+`, `=` or `{`, which passlib/libpass reject ("invalid characters in
sha512_crypt salt"). The system's libcrypt (libxcrypt on Debian) accepts them exactly
as PHP does, so SHA-crypt goes through it: the stdlib's C binding `_crypt` on Python
< 3.13, its maintained copy `legacycrypt` on 3.13+. bcrypt and argon2id use their
reference packages. Every backend is imported on first use, so a login loads only the
one its hash needs.

Import choices on the per-login path (see docs/PERFORMANCE.md): `_crypt` rather than
`crypt`, whose import hashes five test strings to list the methods (~11 ms) and warns;
`_operator._compare_digest` (CPython's constant-time comparison, which `hmac` itself
uses when built without OpenSSL) rather than `hmac`, which loads OpenSSL through
`_hashlib` (~5 ms) to get OpenSSL's equivalent; `secrets` only when making something new.
"""

from __future__ import annotations

from _operator import _compare_digest as compare_digest  # constant-time, as hmac.compare_digest

PASSWORD_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # noqa: S105 - not a secret
_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Dovecot scheme prefixes we may find in front of a modular-crypt string.
_PREFIXES = ("{CRYPT}", "{SHA512-CRYPT}", "{SHA256-CRYPT}", "{BLF-CRYPT}", "{ARGON2ID}")

# Hashes of a random throw-away password with the default cost of each scheme. An
# unknown user is checked against the one for the configured scheme, so that it costs
# the same hash work as a known user with one password (no timing oracle).
_DUMMY_HASHES = {
    "sha512-crypt": "{CRYPT}$6$7QJDBjqPFYlEaHnX$"
    "B6zszmcb/Hsvs2orWAGVUQI2Hup1x1M32ZciV.mIOtykX.R2ukhfot7y2kZV7UkkB9XAcKyzMij4kf1Sdv0B8.",
    "bcrypt": "{BLF-CRYPT}$2y$10$MX5m9R/GtzHpwCKQGO8oF.TSiPzu5HdiRJ0xXR2LNPjRqVc1WPLTG",
    "argon2id": "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$MHGbgFgHXBRC9ItLnG6sPQ$"
    "dCJ8NxwO9HcjxeCbA8hy/SwXlKj0wK7up5Ln73xxL+0",
}


class UnsupportedHash(ValueError):
    """A stored value in a format we cannot verify (reported, never a crash)."""


def _crypt_module():
    """Something with `crypt(word, setting)` from the system's libcrypt."""
    try:
        import _crypt as crypt  # Python < 3.13: the C binding behind `crypt.crypt`
    except ImportError:
        try:
            import legacycrypt as crypt  # Python 3.13+: same binding, maintained separately
        except ImportError:
            import crypt  # a Python build with crypt.py but without _crypt (not seen in practice)
    return crypt


def strip_scheme(stored: str) -> str:
    for prefix in _PREFIXES:
        if stored.upper().startswith(prefix):
            return stored[len(prefix):]
    return stored


def scheme_of(stored: str) -> str:
    """The scheme name of a stored hash: sha512-crypt, sha256-crypt, bcrypt, argon2id."""
    value = strip_scheme(stored)
    if value.startswith("$6$"):
        return "sha512-crypt"
    if value.startswith("$5$"):
        return "sha256-crypt"
    if value[:4] in ("$2y$", "$2b$", "$2a$"):
        return "bcrypt"
    if value.startswith("$argon2id$"):
        return "argon2id"
    raise UnsupportedHash("stored hash has an unknown format")


def _matches_nothing(password: str) -> bool:
    """A password no stored hash can be for: one with a NUL (libcrypt and PHP's crypt take
    C strings, bcrypt refuses it) or with a lone surrogate (not UTF-8, which every scheme
    hashes). Dovecot's fd 3 cannot carry either; serve's /verify JSON can."""
    from .core import utf8_ok  # loaded already by every program that checks a password

    return "\0" in password or not utf8_ok(password)


def verify(password: str, stored: str) -> bool:
    """True when `password` matches `stored`. Constant-time in the comparison.

    UnsupportedHash when `stored` cannot be verified (unknown format, malformed, a NUL
    byte in it). A password that cannot match any hash (`_matches_nothing`) is False,
    after the same hash work as any other."""
    scheme = scheme_of(stored)
    value = strip_scheme(stored)
    if "\0" in value:  # libcrypt would raise ValueError("embedded null character")
        raise UnsupportedHash(f"stored {scheme} hash contains a NUL byte")
    if _matches_nothing(password):
        _verify(scheme, "\ufffd" * len(password), value)  # the same work, whatever it says
        return False
    return _verify(scheme, password, value)


def _verify(scheme: str, password: str, value: str) -> bool:
    """`verify` of `value` (the stored hash without its prefix), of scheme `scheme`."""
    if scheme in ("sha512-crypt", "sha256-crypt"):
        computed = _crypt_module().crypt(password, value)
        if not computed or computed.startswith("*"):
            # libcrypt signals an invalid setting string with "*0"/"*1" or None
            raise UnsupportedHash(f"libcrypt rejected a stored {scheme} hash")
        return compare_digest(computed.encode(), value.encode())
    if scheme == "bcrypt":
        import bcrypt

        # bcrypt uses the first 72 bytes (PHP and libxcrypt truncate silently; bcrypt 5
        # raises instead), and the $2y$ and $2b$ algorithms are the same.
        secret = password.encode()[:72]
        try:
            return bcrypt.checkpw(secret, ("$2b$" + value[4:]).encode())
        except ValueError:  # "Invalid salt": a truncated or otherwise malformed stored value
            raise UnsupportedHash("stored bcrypt hash is malformed") from None
    # argon2id
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    try:
        return PasswordHasher().verify(value, password)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError):
        # argon2-cffi reports a malformed hash as VerificationError("Decoding failed")
        raise UnsupportedHash("stored argon2id hash is malformed") from None


def dummy_verify(password: str, scheme: str = "sha512-crypt", *, rounds: int = 5000, count: int = 1) -> None:
    """Spend the hash work of `count` checks (none when `count` <= 0).

    A failed login pads the checks it made to a fixed number with these ([auth]
    hash_checks), so an unknown user costs what a user with several passwords does. With
    `sha512_rounds` raised, new passwords cost more: the dummy check uses the same
    rounds, so an unknown user still costs what a known one does.
    """
    stored = _DUMMY_HASHES.get(scheme, _DUMMY_HASHES["sha512-crypt"])
    if stored.startswith("{CRYPT}$6$") and rounds != 5000:
        stored = stored.replace("$6$", f"$6$rounds={rounds}$", 1)
    for _ in range(count):
        verify(password, stored)


def hash_password(password: str, scheme: str = "sha512-crypt", *, rounds: int = 5000) -> str:
    """A new stored value, with the Dovecot scheme prefix the plugin also writes."""
    import secrets  # admin path only: a login never makes a hash

    if scheme == "sha512-crypt":
        salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))
        # glibc and PHP leave `rounds=` out at the default 5000; so do we, byte for byte
        setting = f"$6${salt}" if rounds == 5000 else f"$6$rounds={rounds}${salt}"
        return "{CRYPT}" + _crypt_module().crypt(password, setting)
    if scheme == "bcrypt":
        import bcrypt

        hashed = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=10)).decode()
        return "{BLF-CRYPT}$2y$" + hashed[4:]
    if scheme == "argon2id":
        from argon2 import PasswordHasher

        return "{ARGON2ID}" + PasswordHasher().hash(password)
    raise ValueError(f"unknown hash scheme {scheme!r}")


def generate_password(length: int = 16, chunk: int = 4) -> str:
    """`length` random characters from [0-9A-Za-z], grouped by dashes (part of the password)."""
    import secrets

    chars = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
    if chunk <= 0:
        return chars
    return "-".join(chars[i : i + chunk] for i in range(0, length, chunk))
