"""A real OpenLDAP server (`slapd`) on 127.0.0.1 for the account gate's tests.

The fixture writes its own `slapd.conf` (mdb backend, the Debian schema files), a
self-signed certificate for StartTLS and ldaps://, starts `slapd -d 0` on free loopback
ports and loads the directory with `ldapadd`. Anonymous clients see nothing (so a gate
that forgets to bind finds no account and refuses); the service account
`cn=dovecot,ou=services,dc=example,dc=com` may read `ou=users`.

Accounts (login name = `uid`): alice, erin (active), bob (`loginShell: /bin/false`),
carol (`homeDirectory: /dev/null`), two entries for twin (not unique); nobody else exists.
`modify(uid, attr, value)` changes an account; `stop()`/`start()` take the server away.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.common import free_port, missing_dependency, new_server_dir, stop_process_group

BASEDN = "dc=example,dc=com"
USERS_DN = f"ou=users,{BASEDN}"
ROOT_DN = f"cn=admin,{BASEDN}"
ROOT_PW = "root-Secret-4711"
BIND_DN = f"cn=dovecot,ou=services,{BASEDN}"
BIND_PW = "bind-Secret-0815"
SCHEMA = "/etc/ldap/schema"

ACCOUNTS = {
    # uid: (loginShell, homeDirectory, ou)
    "alice@example.com": ("/bin/bash", "/home/alice", "users"),
    "erin@example.com": ("/bin/bash", "/home/erin", "users"),
    "bob@example.com": ("/bin/false", "/home/bob", "users"),
    "carol@example.com": ("/bin/bash", "/dev/null", "users"),
    "twin@example.com": ("/bin/bash", "/home/twin", "users"),
}


def _ldif() -> str:
    out = [f"dn: {BASEDN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
           f"dn: {USERS_DN}\nobjectClass: organizationalUnit\nou: users\n",
           f"dn: ou=staff,{USERS_DN}\nobjectClass: organizationalUnit\nou: staff\n",
           f"dn: ou=services,{BASEDN}\nobjectClass: organizationalUnit\nou: services\n",
           f"dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: dovecot\n"
           f"userPassword: {BIND_PW}\n"]
    for n, (uid, (shell, home, _ou)) in enumerate(ACCOUNTS.items()):
        out.append(_account(f"uid={uid},{USERS_DN}", uid, shell, home, 10000 + n))
    # the second "twin", elsewhere under the base: a filter that finds both is ambiguous
    out.append(_account(f"uid=twin@example.com,ou=staff,{USERS_DN}", "twin@example.com", "/bin/bash",
                        "/home/twin2", 10100))
    return "\n".join(out)


def _account(dn: str, uid: str, shell: str, home: str, number: int) -> str:
    return (f"dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {uid}\n"
            f"cn: {uid}\nsn: {uid.split('@')[0]}\nuidNumber: {number}\ngidNumber: {number}\n"
            f"homeDirectory: {home}\nloginShell: {shell}\n")


def slapd_available() -> str | None:
    for tool in ("/usr/sbin/slapd", "/usr/bin/ldapadd", "/usr/bin/openssl"):
        if not os.path.exists(tool):
            return f"{tool} missing (apt-get install slapd ldap-utils openssl)"
    try:
        import ldap  # noqa: F401
    except ImportError:
        return "python-ldap missing (pip install -e '.[test]')"
    return None


class LdapServer:
    """`slapd` with its own config, data and certificate under `basedir` (0755)."""

    host = "127.0.0.1"

    def __init__(self, basedir: Path):
        self.basedir = basedir
        self.port = free_port()
        self.tls_port = free_port()
        self.conf = basedir / "slapd.conf"
        self.data = basedir / "data"
        self.cert = basedir / "server.pem"
        self.key = basedir / "server.key"
        self.log = basedir / "slapd.log"
        self.proc: subprocess.Popen | None = None
        self.data.mkdir()
        self._make_certificate()
        self.conf.write_text(self._config())

    @property
    def uri(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://{self.host}:{self.tls_port}"

    def _make_certificate(self) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True, timeout=60)
        os.chmod(self.cert, 0o644)

    def _config(self) -> str:
        return f"""# written by tests/support/ldap.py
include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/nis.schema
include {SCHEMA}/inetorgperson.schema
pidfile {self.basedir}/slapd.pid
argsfile {self.basedir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile {self.cert}
TLSCertificateKeyFile {self.key}
database mdb
maxsize 10485760
suffix "{BASEDN}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {self.data}
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{BIND_DN}" read by * none
"""

    def start(self) -> None:
        urls = f"{self.uri}/ {self.ldaps_uri}/"
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(["/usr/sbin/slapd", "-f", str(self.conf), "-h", urls, "-d", "0"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("slapd did not listen within 15 s")

    def load(self) -> None:
        self._ldap_tool("ldapadd", _ldif())

    def _ldap_tool(self, tool: str, ldif: str) -> None:
        res = subprocess.run([f"/usr/bin/{tool}", "-x", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PW],
                             input=ldif, capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{tool} exited {res.returncode}: {res.stderr}")

    def modify(self, uid: str, attr: str, value: str) -> None:
        self._ldap_tool("ldapmodify", f"dn: uid={uid},{USERS_DN}\nchangetype: modify\nreplace: {attr}\n"
                                      f"{attr}: {value}\n")

    def delete(self, uid: str) -> None:
        self._ldap_tool("ldapmodify", f"dn: uid={uid},{USERS_DN}\nchangetype: delete\n")

    def add(self, uid: str, shell: str = "/bin/bash", home: str = "/home/x") -> None:
        self._ldap_tool("ldapadd", _account(f"uid={uid},{USERS_DN}", uid, shell, home, 12000))

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc)
        self.proc = None

    def settings(self, **overrides: object) -> dict:
        """An `[account.ldap]` table for this server (bind as the service account)."""
        table: dict[str, object] = {"uri": self.uri, "basedn": USERS_DN, "bind_dn": BIND_DN,
                                    "bind_password": BIND_PW}
        table.update(overrides)
        return {k: v for k, v in table.items() if v is not None}


@pytest.fixture(scope="session")
def slapd():
    """A running, loaded `LdapServer` for the whole session (tests that stop it restart it)."""
    reason = slapd_available()
    if reason:
        missing_dependency(reason)
    server = LdapServer(new_server_dir("appauth-ldap-"))
    server.start()
    server.load()
    yield server
    server.stop()
    if not os.environ.get("APPAUTH_TEST_KEEP"):
        shutil.rmtree(server.basedir, ignore_errors=True)
